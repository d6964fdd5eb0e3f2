"""Small reference networks on scikit-learn's bundled 8x8 digits, trained in seconds and cached.

Importing this package is cheap: data are loaded and networks trained on first use.

    >>> from almostlinear.zoo import Recipe, digits, digits_mlp, digits_vae
    >>> net = digits_mlp(Recipe(width=64, seed=0))      # trained once, then read from the cache
    >>> vae = digits_vae(latent=8)                       # the VAE, on the "vae" split of digits()
"""

from __future__ import annotations

from ..core.lazy import lazy_exports

_PUBLIC = {
    "digits_data": ("SPLITS", "DigitsSplit", "digits"),
    "mlp": ("Recipe", "digits_mlp", "evaluate", "make_mlp", "train"),
    "vae": ("DigitsVAE", "VAEConfig", "classify", "digits_scorer", "digits_vae", "elbo"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
