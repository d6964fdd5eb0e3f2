"""A small variational autoencoder on scikit-learn's bundled 8x8 digits, and a digit classifier to score it.

Both train deterministically in a few seconds on one CPU thread and are cached under
``cache_dir("zoo", "vae")`` in a file named by the hash of their settings and of the image data, so
the same settings are trained once per machine. Pixels are scaled to ``[0, 1]``; the decoder gives a
Bernoulli mean per pixel (the VAE of Kingma and Welling, arXiv 1312.6114, with a Gaussian encoder).
The pixels are grey levels, not binary, so the Bernoulli term is a cross-entropy rather than a
normalised likelihood: the negative ELBO here compares models on these data, it is not a bound on
a log-likelihood comparable with published ones. Seeding never touches torch's global generator.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.digest import file_key
from ..core.errors import AlmostLinearError, ShapeError
from ..core.paths import cache_dir
from ..core.threads import one_thread
from .digits_data import DigitsSplit, digits

VERSION = 1
N_PIXELS = 64
N_CLASSES = 10


@dataclass(frozen=True)
class VAEConfig:
    """Everything that determines the trained weights."""

    latent: int = 8
    hidden: int = 128
    epochs: int = 150
    batch_size: int = 64
    lr: float = 3e-3
    beta: float = 1.0
    seed: int = 0

    def key(self, digest: str) -> str:
        return file_key(json.dumps({"v": VERSION, "data": digest, **dataclasses.asdict(self)}, sort_keys=True))


class DigitsVAE(nn.Module):
    """64 pixels → ``hidden`` → Gaussian ``latent`` code → ``hidden`` → 64 Bernoulli means."""

    def __init__(self, latent: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(N_PIXELS, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, N_PIXELS))

    def _check(self, x: torch.Tensor, width: int, what: str) -> torch.Tensor:
        if x.shape[-1] != width:
            raise ShapeError(f"{what} must be {width} wide, got shape {tuple(x.shape)}")
        return x.to(torch.float32)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the code given images ``[n, 64]`` with pixels in ``[0, 1]``."""
        mean, log_var = self.encoder(self._check(x, N_PIXELS, "images")).chunk(2, dim=-1)
        return mean, log_var

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: a deterministic code per image."""
        return self.posterior(x)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self._check(z, self.latent, "codes"))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel means in ``[0, 1]``, ``[n, 64]``."""
        return torch.sigmoid(self.decode_logits(z))

    def loss(self, x: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Negative ELBO per image (nats): Bernoulli reconstruction plus ``beta`` times the KL to N(0, I)."""
        if x.numel() and not (0 <= float(x.min()) and float(x.max()) <= 1):
            raise AlmostLinearError(f"pixels must lie in [0, 1] (Bernoulli means), got "
                                    f"{float(x.min())}..{float(x.max())}; scale the images to [0, 1] first")
        mean, log_var = self.posterior(x)
        noise = torch.randn(mean.shape, generator=generator)
        z = mean + noise * (0.5 * log_var).exp()
        recon = nn.functional.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="sum")
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum()
        return (recon + beta * kl) / len(x)


@contextmanager
def _seeded(seed: int):
    """Seed torch's generator for weight initialisation, restoring the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _save(model: nn.Module, path, meta: dict) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"settings": json.dumps(meta)})
    tmp.replace(path)


def train_vae(config: VAEConfig, data: DigitsSplit) -> DigitsVAE:
    """Adam on the negative ELBO over the training digits, seeded."""
    with _seeded(config.seed):
        model = DigitsVAE(config.latent, config.hidden)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    x = data.x_train
    with one_thread():
        for _ in range(config.epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), config.batch_size):
                optimiser.zero_grad(set_to_none=True)
                model.loss(x[order[start:start + config.batch_size]], config.beta, generator).backward()
                optimiser.step()
    return model.eval()


def digits_vae(config: VAEConfig | None = None, *, cache: bool = True, **fields) -> DigitsVAE:
    """The trained VAE of ``config`` (or ``VAEConfig(**fields)``), from the cache when trained before."""
    if config is not None and fields:
        raise AlmostLinearError(f"give either a VAEConfig or its fields, not both (got {sorted(fields)})")
    config = config or VAEConfig(**fields)
    data = digits("vae")
    path = cache_dir("zoo", "vae") / f"vae-{config.key(data.digest)}.safetensors"
    if cache and path.is_file():
        with _seeded(config.seed):  # the initial weights are overwritten; only the generator is spared
            model = DigitsVAE(config.latent, config.hidden)
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = train_vae(config, data)
    if cache:
        _save(model, path, dataclasses.asdict(config))
    return model


@torch.no_grad()
def elbo(model: DigitsVAE, x: torch.Tensor, seed: int = 0) -> float:
    """Negative ELBO per image on ``x`` (one posterior sample per image, seeded)."""
    return float(model.loss(x, 1.0, torch.Generator().manual_seed(seed)))


def make_scorer(seed: int = 0) -> nn.Sequential:
    """The untrained digit classifier, its weights drawn from ``seed``."""
    with _seeded(seed):
        return nn.Sequential(nn.Linear(N_PIXELS, 128), nn.ReLU(), nn.Linear(128, N_CLASSES))


def train_scorer(data: DigitsSplit, *, epochs: int = 40, seed: int = 0) -> nn.Sequential:
    """A digit classifier (one hidden layer) to judge decoded images; trained on the VAE's training digits."""
    model = make_scorer(seed)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    x, y = data.x_train, data.y_train
    with one_thread():
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), 64):
                rows = order[start:start + 64]
                optimiser.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
                optimiser.step()
    return model.eval()


def digits_scorer(*, cache: bool = True, seed: int = 0) -> nn.Sequential:
    """The cached digit classifier (logits ``[n, 10]`` from pixels in ``[0, 1]``)."""
    data = digits("vae")
    key = file_key(f"scorer:{VERSION}:{seed}:{data.digest}")
    path = cache_dir("zoo", "vae") / f"scorer-{key}.safetensors"
    if cache and path.is_file():
        model = make_scorer(seed)
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = train_scorer(data, seed=seed)
    if cache:
        _save(model, path, {"seed": seed})
    return model


@torch.no_grad()
def classify(scorer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Predicted digit per image."""
    return scorer(images.to(torch.float32)).argmax(-1)
