"""Neuron ranking against scikit-learn and SciPy, and a planted neuron found first."""

import subprocess
import sys

import pytest
import torch
from scipy.stats import pointbiserialr
from sklearn.metrics import roc_auc_score

from almostlinear.core.errors import EmptyDataError, NonFiniteError, ShapeError
from almostlinear.features import auroc, compare_views, point_biserial, rank_units
from almostlinear.sae import fit_sae


def _planted(n=400, d=30, neuron=7, seed=0, strength=1.5):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, d, generator=g)
    x[:, neuron] += strength * (2 * y - 1)  # the concept neuron
    x[:, 3] -= 0.5 * (2 * y - 1)  # a weaker one, with a minus sign
    return x, y


def test_auroc_and_correlation_match_sklearn_and_scipy_with_ties():
    x, y = _planted()
    x[:, 0] = torch.round(x[:, 0])  # many ties
    expected = torch.tensor([roc_auc_score(y.numpy(), x[:, j].numpy()) for j in range(x.shape[1])])
    torch.testing.assert_close(auroc(x, y), expected.double(), atol=1e-6, rtol=0)  # sklearn sums in float32
    r = torch.tensor([pointbiserialr(y.numpy(), x[:, j].numpy())[0] for j in range(x.shape[1])])
    torch.testing.assert_close(point_biserial(x, y), r.double(), atol=1e-10, rtol=0)


def test_a_planted_neuron_is_ranked_first_and_signs_are_read():
    x, y = _planted()
    ranking = rank_units(x, y)
    assert ranking.best == 7 and ranking.sign(7) == 1
    assert int(ranking.order[1]) == 3 and ranking.sign(3) == -1
    assert ranking.table(2)[0]["unit"] == 7


def test_views_top_neurons_probe_and_sae_latents():
    x, y = _planted(n=800)
    x_tr, y_tr, x_te, y_te = x[:600], y[:600], x[600:], y[600:]
    sae = fit_sae(x_tr, 60, k=6, epochs=5, batch_size=100)
    views = compare_views(x_tr, y_tr, x_te, y_te, ks=(1, 2, 30), sae=sae)
    assert views.best_neuron == 7 and views.best_neuron_auroc > 0.9
    assert views.neurons[0] > 0.85  # one neuron already reads the concept
    assert views.neurons[1] >= views.neurons[0] - 0.02
    assert views.probe == pytest.approx(views.neurons[2], abs=0.03)  # top-30 of 30 units = the full probe
    assert views.latents is not None and len(views.latents) == 3
    assert 0 <= views.best_latent < 60 and views.best_latent_auroc >= 0.5
    assert views.probe_auroc > 0.9


def test_bad_inputs_raise():
    x, y = _planted(n=20)
    with pytest.raises(EmptyDataError, match="both classes"):
        rank_units(x, torch.zeros(20))
    with pytest.raises(ShapeError, match="one label per row"):
        rank_units(x, y[:10])
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        rank_units(x, y)
    with pytest.raises(ShapeError, match="0/1"):
        rank_units(torch.randn(4, 2), torch.tensor([0, 1, 2, 1]))


@pytest.mark.real
def test_a_sentiment_neuron_in_smollm2(smollm2):
    """The search of arXiv 1704.01444 on SmolLM2's MLP neurons at block 15, held-out words."""
    from almostlinear.core.collect import collect
    from almostlinear.features import sentiment_texts

    items = sentiment_texts(smollm2.tokenizer, 40, seed=0, frames=("The film was {word}.", "The trip had been {word}."))
    assert {i.label for i in items} == {0, 1}
    words = sorted({i.word for i in items})
    test_words = set(words[::4])
    x = collect(smollm2.model, smollm2.tokenizer, [i.text for i in items], "mlp_key.15", positions="last")["mlp_key.15"]
    y = torch.tensor([i.label for i in items])
    te = torch.tensor([i.word in test_words for i in items])
    views = compare_views(x[~te], y[~te], x[te], y[te], ks=(1, 16))
    assert views.best_neuron_auroc > 0.75  # one neuron, chosen on other words, reads sentiment
    assert views.probe > 0.75


def test_importing_features_loads_nothing_and_every_public_name_resolves():
    code = (
        "import sys, types\n"
        "import almostlinear.features as package\n"
        "assert 'torch' not in sys.modules, 'importing the package imported torch'\n"
        "for name in package.__all__:  # a name shadowed by its submodule would come back as a module\n"
        "    assert not isinstance(getattr(package, name), types.ModuleType), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
