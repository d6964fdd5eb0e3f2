import torch

from almostlinear.core.section import AuditContext, Budget, Need, Section
from almostlinear.audit.plan import run_sections
from almostlinear.core.report import SectionResult
from almostlinear.core.models import LoadedModel
from almostlinear.core.sites import Site
from tiny_models import TEXTS, build_model, make_tokenizer


class _Reader(Section):
    def __init__(self, id: str, skip_first: bool, positions: str = "all") -> None:
        self.id, self.title, self.skip_first, self.positions = id, id, skip_first, positions
        self.seen: list[torch.Tensor] = []

    def needs(self, ctx):
        return [Need("neutral", (Site("resid_post", 0),), positions=self.positions, skip_first=self.skip_first)]

    def consume(self, source, batch):
        self.seen.append(batch.position.clone())

    def finish(self, ctx):
        return SectionResult(self.id, self.title)


def test_a_need_that_skips_first_tokens_never_sees_them_in_a_shared_pass():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny", "memory", "causal-lm")
    budget = Budget(neutral_texts=4, neutral_new_tokens=4, lens_tokens=8, statements=4, fact_candidates=4,
                    batch_size=2)
    ctx = AuditContext(loaded, budget, progress=lambda _: None)
    keeps, skips, last = _Reader("keeps", False), _Reader("skips", True), _Reader("last", True, "last")
    results = run_sections(ctx, [keeps, skips, last], lambda source: list(TEXTS[:4]))
    assert all(r.status == "ok" for r in results)
    kept, skipped = torch.cat(keeps.seen), torch.cat(skips.seen)
    assert (kept == 0).sum() == 4  # one first token per text
    assert (skipped > 0).all() and len(skipped) == len(kept) - 4
    assert (torch.cat(last.seen) > 0).all()
