import pytest

from almostlinear.core.errors import EmptyDataError
from almostlinear.data import Statement
from almostlinear.truth import contrast_prompts, distractor_check
from truth_synthetic import make_pairs


PLANT = {"truth": 1.0, "distractor": 4.0}


def _check(seed, **kwargs):
    data = make_pairs(400, 16, seed=seed, blocks=2, **kwargs)  # train and test halves, each balanced
    results = distractor_check(data.x_pos, data.x_neg, data.truth, data.distractor, train=range(200),
                               test=range(200, 400), restarts=5, seed=seed)
    return {r.method: r for r in results}


def test_with_a_stronger_distractor_pca_follows_it_and_supervised_methods_follow_truth():
    results = _check(0, truth_scale=PLANT["truth"], distractor_scale=PLANT["distractor"])
    assert results["contrast_pca"].follows == "distractor"
    assert results["contrast_pca"].distractor_accuracy > 0.95
    assert results["ccs"].follows == "distractor"  # the distractor is the lowest-loss consistent feature
    for method in ("mean_difference", "logistic"):
        assert results[method].follows == "truth"
        assert results[method].truth_accuracy > 0.9
        assert results[method].distractor_accuracy < 0.65


def test_without_a_distractor_every_method_follows_truth():
    results = _check(1, truth_scale=PLANT["truth"], distractor_scale=0.0)
    for result in results.values():
        assert result.follows == "truth" and result.truth_accuracy > 0.9, result


def _statements(n_subjects):
    out = []
    for i in range(n_subjects):
        out.append(Statement(f"City{i} is in A.", True, f"City{i}", "A", "A"))
        out.append(Statement(f"City{i} is in B.", False, f"City{i}", "B", "A"))
    return out


def test_contrast_prompts_pair_every_statement_and_balance_the_distractor():
    statements = _statements(20)
    prompts = contrast_prompts(statements, distractor_pairs=16, seed=3)
    clean = [p for p in prompts if p.variant == "clean"]
    planted = [p for p in prompts if p.variant == "distractor"]
    assert len(clean) == 80 and len(planted) == 32
    assert clean[0].text == "City0 is in A. Is this true? Yes" and clean[1].text == "City0 is in A. Is this true? No"
    yes_sides = [p for p in planted if p.positive]
    for label in (True, False):
        flags = [p.distractor for p in yes_sides if p.label == label]
        assert len(flags) == 8 and sum(flags) == 4  # balanced within each truth class
    for p in planted:
        word = "Banana" if p.positive == p.distractor else "Shed"
        answer = "Yes" if p.positive else "No"
        assert p.text == f"{p.subject} is in {'A' if p.label else 'B'}. {word}. Is this true? {answer}"
    by_subject = {}
    for p in yes_sides:
        by_subject.setdefault(p.subject, set()).add(p.distractor)
    assert all(len(flags) == 1 for flags in by_subject.values())  # a subject's statements share the flag
    assert contrast_prompts(statements, distractor_pairs=16, seed=3) == prompts


def test_contrast_prompts_refuse_too_few_statements_and_bad_templates():
    with pytest.raises(EmptyDataError):
        contrast_prompts(_statements(1)[:1])
    with pytest.raises(ValueError, match="statement"):
        contrast_prompts(_statements(2), question="{answer}")


def test_distractor_check_needs_one_layer_and_a_test_split():
    data = make_pairs(40, 6)
    with pytest.raises(ValueError, match="one layer"):
        distractor_check(data.x_pos[None], data.x_neg[None], data.truth, data.distractor, train=range(20),
                         test=range(20, 40))
    with pytest.raises(ValueError, match="test split is empty"):
        distractor_check(data.x_pos, data.x_neg, data.truth, data.distractor, train=range(40), test=[])


def test_fit_methods_refuses_unknown_methods_and_supervision_without_labels():
    from almostlinear.truth import credence, fit_methods

    data = make_pairs(16, 4)
    with pytest.raises(ValueError, match="unknown truth-direction method"):
        fit_methods(data.x_pos, data.x_neg, data.truth, methods=("lda",))
    with pytest.raises(ValueError, match="need labels"):
        fit_methods(data.x_pos, data.x_neg, None, methods=("logistic",))
    unsupervised = fit_methods(data.x_pos, data.x_neg, None, methods=("ccs", "contrast_pca"), restarts=2)
    assert set(unsupervised) == {"ccs", "contrast_pca"}
    with pytest.raises(ValueError, match="needs a CCS fit"):
        credence(unsupervised["contrast_pca"], data.x_pos, data.x_neg)
