import pytest
import torch

from almostlinear.core.collect import collect
from almostlinear.core.locate import locate
from almostlinear.truth.zero_shot import answer_logit_gap, calibrated_accuracy, raw_accuracy
from tiny_models import build_model, make_tokenizer


def _gap_from_the_model(model, tokenizer, prefixes, yes, no):
    out = []
    for text in prefixes:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        out.append(float(logits[yes] - logits[no]))
    return torch.tensor(out, dtype=torch.float64)


def _gap_from_the_residual(model, tokenizer, prefixes, yes, no):
    structure = locate(model)
    last = f"resid_post.{structure.n_layers - 1}"
    acts = collect(model, tokenizer, prefixes, [last], positions="last")
    ids = torch.full((len(prefixes),), yes), torch.full((len(prefixes),), no)
    return answer_logit_gap(structure, acts[last], *ids)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_answer_gap_equals_the_models_own_logit_difference(family):
    model, tokenizer = build_model(family), make_tokenizer()
    prefixes = ["the cat is on the road ?", "Paris is in France ?", "one two"]
    yes, no = tokenizer.convert_tokens_to_ids(["one", "two"])
    expected = _gap_from_the_model(model, tokenizer, prefixes, yes, no)
    assert torch.allclose(_gap_from_the_residual(model, tokenizer, prefixes, yes, no), expected, atol=1e-4)


@pytest.mark.real
def test_answer_gap_on_smollm2(smollm2):
    prefixes = ["The city of Paris is in France. Is this true?", "The city of Lyon is in Japan. Is this true?"]
    yes, no = smollm2.tokenizer.convert_tokens_to_ids(["ĠYes", "ĠNo"])
    expected = _gap_from_the_model(smollm2.model, smollm2.tokenizer, prefixes, yes, no)
    got = _gap_from_the_residual(smollm2.model, smollm2.tokenizer, prefixes, yes, no)
    assert torch.allclose(got, expected, atol=1e-3 * (1 + float(expected.abs().max())))


def test_calibration_thresholds_at_the_training_median():
    train = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # median 3: a model biased towards "Yes"
    test = torch.tensor([2.5, 3.5, 4.0, 1.0])
    labels = torch.tensor([False, True, True, False])
    assert calibrated_accuracy(train, test, labels) == 1.0
    assert raw_accuracy(test, labels) == 0.5
