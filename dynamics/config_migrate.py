"""The deprecated flat optimizer fields, moved into their sections (JAX-free).

Before each optimizer had its own section ``optimizer.<name>``
(`dynamics.config_schema`), its hyperparameters were flat fields
(``optimizer.b2``, ...). For one release they are still accepted:
`resolve_deprecated` moves them into the selected optimizer's section (one
notice each), and `migrate_flat_fields` converts a run record written before
the sections, so old runs keep opening with their values;
`config_from_record` turns a record into a locked config.
"""

import copy
import logging
from typing import Any, Dict, List, Mapping, Optional

import ml_collections

from dynamics import workdir  # JAX-free: the lock and the record flattening.
from dynamics.config_schema import _flat_fields, defaults, optimizer_sections


def deprecated_flat_fields() -> Dict[str, type]:
  """``{field: type}`` of the deprecated flat ``optimizer.<field>`` names."""
  return _flat_fields(defaults().optimizer)


def _move_flat(opt: Dict[str, Any], flat: Mapping[str, Any],
               section_fields: Mapping[str, Any]) -> List[str]:
  """Moves the set ``flat`` values into ``opt[opt['name']]``; the notices."""
  name, notices = opt.get('name'), []
  fields = section_fields.get(name, ())
  for field, value in flat.items():
    if value is None:
      continue
    if field in fields:
      opt[name][field] = value
      notices.append(f'config.optimizer.{field} is deprecated: use '
                     f'optimizer.{name}.{field} (set to {value!r})')
    else:
      owners = [n for n, f in section_fields.items() if field in f]
      notices.append(f'config.optimizer.{field} is deprecated and '
                     f'optimizer.name={name} has no such field: ignored (use '
                     + ' or '.join(f'optimizer.{n}.{field}' for n in owners)
                     + ')')
  return notices


def resolve_deprecated(config: ml_collections.ConfigDict,
                       given: Optional[Mapping[str, Any]] = None) -> List[str]:
  """Moves the deprecated flat optimizer fields into the selected section.

  Every flat ``config.optimizer.<field>`` that is set (not None) is copied
  into ``config.optimizer.<name>.<field>`` of the selected optimizer (or
  ignored, when that optimizer has no such field, as before the sections)
  and reset to None, so the recorded config holds only the nested values;
  a second call does nothing. ``given`` adds flat values that cannot sit in
  the config (``optimizer.momentum=0.9`` from the command line: that name is
  the momentum optimizer's section now).

  Returns:
    One line per moved field, the deprecation notice to show.
  """
  return resolve_deprecated_optimizer(config.optimizer, given)


def set_flat_fields(opt_config: Any) -> Dict[str, Any]:
  """``{field: value}`` of the deprecated flat fields set in ``opt_config``."""
  return {k: opt_config[k] for k in _flat_fields(opt_config)
          if k in opt_config and opt_config[k] is not None
          and not isinstance(opt_config[k], ml_collections.ConfigDict)}


def resolve_deprecated_optimizer(o: Any,
                                 given: Optional[Mapping[str, Any]] = None
                                 ) -> List[str]:
  """`resolve_deprecated` of the optimizer section ``o`` alone."""
  flat = {**set_flat_fields(o), **(given or {})}
  sections = optimizer_sections(o)
  notices = _move_flat({'name': o.name, **sections}, flat,
                       {n: tuple(s) for n, s in sections.items()})
  for field in flat:
    if field in o and not isinstance(o[field], ml_collections.ConfigDict):
      o[field] = None
  return notices


def migrate_flat_fields(record: Mapping[str, Any]) -> Dict[str, Any]:
  """A ``config.json`` record of before the optimizer sections, in today's
  layout: the flat ``optimizer.<field>`` values move into the selected
  optimizer's section (``optimizer.b2`` of an ``adamw`` run becomes
  ``optimizer.adamw.b2``); the fields that optimizer does not have, which it
  ignored, and unset placeholders are dropped (a record in today's layout
  loses only those). Pure: the input is not changed.

  Example:
    >>> old = {'optimizer': {'name': 'momentum', 'momentum': 0.8, 'b1': 0.9}}
    >>> migrate_flat_fields(old)['optimizer']
    {'name': 'momentum', 'momentum': {'momentum': 0.8}}
  """
  record = copy.deepcopy(dict(record))
  if not isinstance(record.get('optimizer'), Mapping):
    return record
  declared = defaults().optimizer
  flat_names = _flat_fields(declared)
  opt = dict(record['optimizer'])
  flat = {k: opt.pop(k) for k in list(opt)
          if k in flat_names and not isinstance(opt[k], Mapping)}
  name = opt.get('name')
  section_fields = {n: tuple(s)
                    for n, s in optimizer_sections(declared).items()}
  if name in section_fields and any(v is not None for v in flat.values()):
    opt[name] = dict(opt.get(name) or {})
  _move_flat(opt, flat, section_fields)
  record['optimizer'] = opt
  return record


def config_from_record(record: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A locked config from a ``config.json`` record.

  Fields the record lacks (a run recorded before the field existed) keep
  their default from `dynamics.config_schema.defaults`; recorded fields that
  are no longer declared are dropped with a warning.
  """
  config = defaults()
  known = workdir.flatten(config.to_dict())
  values = {k: tuple(v) if isinstance(v, list) else v  # JSON has no tuples.
            for k, v in workdir.flatten(record).items()
            if k.split('.')[0] not in workdir.NOT_FIELDS}
  dropped = sorted(k for k in values if k not in known)
  if dropped:
    logging.warning('run record: fields no longer declared, ignored: %s',
                    ', '.join(dropped))
  with config.ignore_type():  # A recorded value is what the run used.
    config.update_from_flattened_dict(
        {k: v for k, v in values.items() if k in known})
  return config
