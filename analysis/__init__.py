"""Post-hoc and training-time analysis of `dynamics` runs (Hessian spectra, ...)."""
