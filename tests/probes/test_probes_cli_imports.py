"""Building the command line's parser imports every family's ``cli`` module, which must not import torch."""

import subprocess
import sys


def test_family_cli_modules_import_without_torch():
    code = ("import almostlinear.probes.cli, almostlinear.lens.cli, almostlinear.sae.cli, almostlinear.latent.cli, "
            "almostlinear.translate.cli, sys; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_family_packages_resolve_their_names_lazily():
    code = ("import sys, almostlinear.probes as p, almostlinear.lens as l, almostlinear.sae as s, "
            "almostlinear.latent as a, almostlinear.translate as t, almostlinear.truth as r\n"
            "assert 'torch' not in sys.modules\n"
            "assert (p.LinearProbe.kind, l.TunedLens.kind, s.LatentDirection.kind, a.AttributeDirection.kind,\n"
            "        t.LinearMap.kind, r.TruthDirection.kind) == ('probes.linear', 'lens.tuned', 'sae.latent_direction',\n"
            "        'latent.attribute_direction', 'translate.linear_map', 'truth.direction')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
