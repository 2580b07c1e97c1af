"""Array operations with no parameters, used by losses and samplers (e.g. the distance transform of
Contextrast's boundary-aware negative sampling)."""
