"""Model registry: `--model` name -> constructor and size profiles.

Every score network maps (B, 1, n, n) images and per-sample times t (B,) to
(B, 1, n, n), for any grid size n.
"""
import ast
import importlib
import inspect

MODELS = {  # name -> module holding the class and its PROFILES
    "unet": ("models.unet", "UNet"),
    "fno": ("models.fno", "FNO"),
    "cno": ("models.cno", "CNO"),
}


def model_class_and_profiles(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    module_name, class_name = MODELS[name]
    module = importlib.import_module(module_name)
    return getattr(module, class_name), module.PROFILES


def model_kwargs(name, profile, overrides=None):
    """Constructor arguments: the profile's, then `overrides` (validated by name)."""
    cls, profiles = model_class_and_profiles(name)
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r} for {name}: expected one of {', '.join(profiles)}")
    kwargs = dict(profiles[profile])
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "in_channels", "out_channels"}
    for key, value in (overrides or {}).items():
        if key not in accepted:
            raise ValueError(f"{name} has no argument {key!r}: expected one of {', '.join(sorted(accepted))}")
        kwargs[key] = value
    return kwargs


def build_model(name, **kwargs):
    """Instantiate model `name` with constructor kwargs (see model_kwargs)."""
    cls, _ = model_class_and_profiles(name)
    return cls(**kwargs)


def parse_model_args(items):
    """['ch=32', 'ch_mult=1,2,2'] -> {'ch': 32, 'ch_mult': (1, 2, 2)} (Python literals)."""
    parsed = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model_arg {item!r}: expected KEY=VALUE")
        try:
            parsed[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed[key] = text  # a plain string, e.g. activation=gelu
    return parsed


def count_parameters(model):
    """Real parameter count (a complex weight counts twice)."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
