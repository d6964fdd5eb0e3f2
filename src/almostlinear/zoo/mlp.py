"""ReLU MLPs on the digits, trained deterministically in seconds and cached by their recipe.

A :class:`Recipe` says everything that determines the weights (width, depth, seeds, optimiser,
which images and classes, which parent it starts from). Its hash names the cached file under
``cache_dir("zoo", "digits")``, so the same recipe is trained once per machine and two recipes never
share a file. Training uses one torch thread and plain SGD with momentum: a width-64 net takes about
a second, a width-1024 net tens of seconds, on one CPU core.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.digest import file_key
from ..core.errors import AlmostLinearError, EmptyDataError, ShapeError
from ..core.paths import cache_dir
from ..core.threads import one_thread
from .digits_data import digits

RECIPE_VERSION = 1
N_PIXELS = 64
N_CLASSES = 10


@dataclass(frozen=True)
class Recipe:
    """How one digits MLP is made. ``parent`` fine-tunes another recipe's weights instead of a fresh init.

    ``rows`` takes training rows ``[start, stop)`` of the fixed split; ``classes`` keeps only those
    digits among them. ``data_seed`` orders the minibatches (defaults to ``seed``).
    """

    width: int = 64
    depth: int = 2
    seed: int = 0
    epochs: int = 30
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    weight_decay: float = 0.0
    rows: tuple[int, int] | None = None
    classes: tuple[int, ...] | None = None
    data_seed: int | None = None
    parent: Recipe | None = None

    def key(self) -> str:
        """Content hash of the recipe (and of its parents), used as the cache file name."""
        return file_key(json.dumps({"v": RECIPE_VERSION, **dataclasses.asdict(self)}, sort_keys=True, default=list))

    def fine_tune(self, **changes) -> Recipe:
        """A recipe that starts from this one's weights (same architecture)."""
        return dataclasses.replace(self, parent=self, **changes)


def make_mlp(width: int = 64, depth: int = 2, seed: int = 0) -> nn.Sequential:
    """``depth`` hidden ReLU layers of ``width`` units, He-normal weights, zero biases, seeded."""
    if width < 1 or depth < 1:
        raise ShapeError(f"an MLP needs width >= 1 and depth >= 1, got width={width}, depth={depth}")
    sizes = [N_PIXELS] + [width] * depth + [N_CLASSES]
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) * (2.0 / fan_in) ** 0.5)
            linear.bias.zero_()
        layers.append(linear)
        if i < depth:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 30, lr: float = 0.05,
          momentum: float = 0.9, batch_size: int = 32, weight_decay: float = 0.0, seed: int = 0,
          callback=None, progress: bool = False) -> nn.Module:
    """Minibatch SGD with momentum on cross-entropy, in place; ``callback(step, model)`` after each step.

    The callback is where SWA / EMA averaging hooks in (``WeightAverage.update``).
    """
    if len(y) == 0:
        raise EmptyDataError("no training images: check the rows and classes of the recipe")
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    model.train()
    epochs_iter = range(epochs)
    if progress:
        from tqdm import tqdm

        epochs_iter = tqdm(epochs_iter, desc="training digits MLP", unit="epoch", leave=False)
    with one_thread():
        for _ in epochs_iter:
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), batch_size):
                rows = order[start:start + batch_size]
                optimiser.zero_grad(set_to_none=True)
                loss_fn(model(x[rows]), y[rows]).backward()
                optimiser.step()
                step += 1
                if callback is not None:
                    callback(step, model)
    return model.eval()


def _train_recipe(recipe: Recipe, progress: bool) -> nn.Sequential:
    if recipe.parent is not None:
        if (recipe.parent.width, recipe.parent.depth) != (recipe.width, recipe.depth):
            raise ShapeError("a fine-tune keeps its parent's width and depth")
        model = digits_mlp(recipe.parent, progress=progress)
    else:
        model = make_mlp(recipe.width, recipe.depth, recipe.seed)
    data = digits("mlp")
    x, y = data.x_train, data.y_train
    if recipe.rows is not None:
        x, y = x[recipe.rows[0]:recipe.rows[1]], y[recipe.rows[0]:recipe.rows[1]]
    if recipe.classes is not None:
        keep = torch.isin(y, torch.tensor(recipe.classes))
        x, y = x[keep], y[keep]
    seed = recipe.seed if recipe.data_seed is None else recipe.data_seed
    return train(model, x, y, epochs=recipe.epochs, lr=recipe.lr, momentum=recipe.momentum,
                 batch_size=recipe.batch_size, weight_decay=recipe.weight_decay, seed=seed, progress=progress)


def digits_mlp(recipe: Recipe | None = None, *, cache: bool = True, progress: bool = False,
               **fields) -> nn.Sequential:
    """The trained network of ``recipe`` (or ``Recipe(**fields)``), from the cache when it was made before."""
    if recipe is not None and fields:
        raise AlmostLinearError(f"give a recipe or its fields, not both (got a recipe and {sorted(fields)})")
    recipe = recipe or Recipe(**fields)
    path = cache_dir("zoo", "digits") / f"mlp-{recipe.key()}.safetensors"
    if cache and path.is_file():
        model = make_mlp(recipe.width, recipe.depth, 0)
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = _train_recipe(recipe, progress)
    if cache:
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"recipe": json.dumps(dataclasses.asdict(recipe), default=list)})
        tmp.replace(path)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` on ``(x, y)``."""
    if len(y) == 0:
        raise EmptyDataError("no images to evaluate on")
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    return {"loss": float(nn.functional.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(1) == y).float().mean())}
