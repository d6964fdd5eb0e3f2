"""``almostlinear latent``: paths and attribute arithmetic on the digits VAE, scored, with a PNG grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import clitools


def latent_command(source: int = 3, target: int = 8, *, steps: int = 9, out: str | Path | None = "latent.png",
                   per_pair: int = 8, all_pairs: bool = False, seed: int = 0, direction_out: str | None = None,
                   stream=None, say=clitools.say) -> dict:
    """Score lerp, slerp and pixel paths and class-mean arithmetic from digit ``source`` to ``target``.

    With ``all_pairs`` the scores are over all 90 ordered digit pairs. ``out`` receives a grid image of
    one test digit of each class: pixel cross-fade, straight path, spherical path, and arithmetic.
    """
    from ..core.errors import ShapeError
    from ..zoo.digits_data import digits
    from ..zoo.vae import digits_vae
    from .digits import KINDS, demo_grid, score_digits
    from .artifact import AttributeDirection
    from .grid import save_grid

    stream = stream or sys.stdout
    for digit in (source, target):
        if not 0 <= digit <= 9:
            raise ShapeError(f"digits are 0 to 9, got {digit}")
    if source == target:
        raise ShapeError("choose two different digits for --from and --to")
    say("training or loading the digits VAE and its classifier (cached after the first run)")
    vae = digits_vae()
    pairs = None if all_pairs else [(source, target)]
    scores = score_digits(pairs=pairs, per_pair=per_pair, steps=steps, seed=seed, vae=vae)
    what = "all 90 ordered digit pairs" if all_pairs else f"{source} → {target}"
    print(f"digits VAE, {what}: {per_pair} test pairs each, {steps} steps per path", file=stream)
    print(f"{'path':>7}  {'agreement':>9}  {'given endpoints':>15}  {'confidence':>10}", file=stream)
    for kind in KINDS:
        print(f"{kind:>7}  {scores.agreement[kind]:>9.3f}  {scores.agreement_given_endpoints[kind]:>15.3f}  "
              f"{scores.confidence[kind]:>10.3f}", file=stream)
    print(f"arithmetic z - mean_{source if not all_pairs else 'a'} + mean_{target if not all_pairs else 'b'}: "
          f"{scores.transfer:.3f} classified as intended (unmoved {scores.transfer_baseline:.3f})", file=stream)
    print(f"agreement = share of decoded steps classified as the nearer endpoint's digit (given endpoints: over "
          f"paths whose two ends are recognised); reconstructions classified correctly: "
          f"{scores.reconstruction_accuracy:.3f}", file=stream)
    result = {"scores": scores}
    if out is not None:
        images, labels = demo_grid(source, target, steps=steps, seed=seed, vae=vae)
        path = save_grid(images, out, row_labels=labels, title=f"digits VAE: {source} → {target}")
        print(f"wrote {path}", file=stream)
        result["image"] = path
    if direction_out is not None:
        data = digits("vae")
        direction = AttributeDirection.fit(vae.encode(data.x_train), data.y_train, source, target, space="digits-vae")
        path = direction.save(direction_out)
        print(f"saved the direction mean_{target} - mean_{source} to {path}", file=stream)
        result["direction"] = path
    return result


def _digit(text: str) -> int:
    """A digit class, 0 to 9."""
    value = clitools.nonnegative_int(text)
    if value > 9:
        raise argparse.ArgumentTypeError(f"digits are 0 to 9, got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    latent_command(args.source, args.target, steps=args.steps, out=args.out, per_pair=args.per_pair,
                   all_pairs=args.all_pairs, seed=args.seed, direction_out=args.direction_out)
    return 0


def register(sub) -> None:
    """Add ``latent`` to an argparse sub-parsers object."""
    p = sub.add_parser("latent", help="latent paths and attribute arithmetic on the digits VAE, scored, as a PNG",
                       description=latent_command.__doc__)
    p.add_argument("--from", dest="source", type=_digit, default=3, help="start digit (default 3)")
    p.add_argument("--to", dest="target", type=_digit, default=8, help="end digit (default 8)")
    p.add_argument("--steps", type=clitools.int_at_least(2), default=9,
                   help="points per path, endpoints included (>= 2)")
    p.add_argument("--per-pair", type=clitools.positive_int, default=8, help="test pairs scored per digit pair")
    p.add_argument("--all-pairs", action="store_true", help="score all 90 ordered digit pairs")
    p.add_argument("--out", default="latent.png", type=clitools.output_file,
                   help="PNG grid to write (default latent.png)")
    p.add_argument("--direction-out", default=None, type=clitools.output_file,
                   help="save the attribute direction as .safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)
