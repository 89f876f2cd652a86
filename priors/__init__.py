"""Prior registry: `--prior_name` -> a FourierPrior (see priors/base.py for the convention)."""
from priors.base import FourierPrior, PerSampleGenerator
from priors.operators import (CombinedPrior, LaplacianPrior, MaternPrior, RandomModesPrior,
                              StandardPrior, laplacian_symbol)

PRIORS = {cls.name: cls for cls in (StandardPrior, LaplacianPrior, RandomModesPrior,
                                    CombinedPrior, MaternPrior)}


def build_prior(name, n0, **options):
    """Construct the prior `name` at training resolution n0 with its options."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}: expected one of {', '.join(PRIORS)}")
    return PRIORS[name](n0, **options)


def prior_from_config(config):
    """Rebuild a prior from `prior.config()` (as stored in a checkpoint)."""
    options = dict(config)
    return build_prior(options.pop("name"), options.pop("n0"), **options)


__all__ = ["FourierPrior", "PerSampleGenerator", "PRIORS", "build_prior", "prior_from_config", "laplacian_symbol"]
