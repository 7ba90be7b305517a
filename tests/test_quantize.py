"""Speed-ups that touch the weights: SmoothQuant is an exact rewrite in fp32; int8 keeps the bidirectional attention
(a deep copy of the backbone would silently drop the unmasking hooks) and stays close to fp32."""

import pytest
import torch
from test_model import batch_for, build

from llm_ner.inference.engine import NERModel
from llm_ner.inference.quantize import Int8Linear, activation_absmax, int_mm_is_exact, quantize_int8, smooth
from llm_ner.modeling.model import LLMForTokenClassification

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


SENTS = ["Peter visited London today .", "EU rejects German call to boycott British lamb .",
         "Apple hired John Smith from Google in London ."]


def big_activations(model):
    """Random init has no outlier channels; give the norms some, as trained LLMs have, so smoothing matters."""
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "layernorm" in name:
                p.mul_(torch.exp(2 * torch.randn_like(p)))


def test_smoothing_is_exact_in_fp32(tiny_llama, tiny_tokenizer):
    model = build(tiny_llama, mode="full")
    big_activations(model)
    batch = batch_for(tiny_tokenizer, SENTS)
    with torch.no_grad():
        before = model(**batch).logits
    amax = activation_absmax(model.backbone, lambda: model(**batch))
    w0 = model.backbone.layers[0].mlp.down_proj.weight.clone()
    assert smooth(model.backbone, amax, alpha=0.8) == len(model.backbone.layers)
    assert not torch.equal(w0, model.backbone.layers[0].mlp.down_proj.weight)  # the weights did change
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheme", ["per_token", "per_tensor", "torchao"])
def test_int8_keeps_bidirectional_attention_and_stays_close(tiny_llama, tiny_tokenizer, scheme):
    if scheme == "torchao":
        pytest.importorskip("torchao")
    batch = batch_for(tiny_tokenizer, SENTS)
    ref, causal, q = (build(tiny_llama, mode="full", unmask=u) for u in ("all", "none", "all"))
    for m in (ref, causal, q):
        torch.manual_seed(1)
        big_activations(m)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in q.backbone.modules())
    if scheme == "torchao" and not int_mm_is_exact():  # a CPU whose int8 matmul saturates: refused, not wrong
        with pytest.raises(ValueError, match="saturates"):
            quantize_int8(q, lambda: q(**batch), scheme=scheme)
        return
    quantize_int8(q, lambda: q(**batch), scheme=scheme)
    if scheme == "per_token":  # by default every Linear of the backbone (q k v o gate up down)
        assert sum(isinstance(m, Int8Linear) for m in q.backbone.modules()) == n_linear == 7 * len(q.backbone.layers)
    elif scheme == "per_tensor":
        assert any("quantized" in type(m).__module__ for m in q.backbone.modules())
    else:  # torchao swaps each Linear's weight for an int8 tensor subclass
        assert all("torchao" in type(m.weight).__module__ for m in q.backbone.modules()
                   if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        r, c, x = ref(**batch).logits, causal(**batch).logits, q(**batch).logits
    err, causal_gap = (x - r).abs().mean().item(), (c - r).abs().mean().item()
    assert err < 0.2 * causal_gap, (err, causal_gap)


def test_int8_model_from_pretrained_predicts_aligned_spans(tiny_ner_dir):
    fp32 = NERModel.from_pretrained(tiny_ner_dir)
    int8 = NERModel.from_pretrained(tiny_ner_dir, precision="int8")
    assert isinstance(int8.model, LLMForTokenClassification)
    a, b = fp32(SENTS).entities, int8(SENTS).entities
    for text, ents in zip(SENTS, b, strict=True):
        assert all(text[e.start : e.end] == e.text for e in ents)
    same = sum((e.start, e.end, e.label) in {(f.start, f.end, f.label) for f in fa}
               for fa, fb in zip(a, b, strict=True) for e in fb)
    assert same >= 0.7 * max(1, sum(map(len, a)))


def test_stream_and_unsorted_batches_give_the_same_answers(tiny_ner_dir):
    def spans(res):  # scores differ in the 4th decimal with different padding; spans must not
        return [[(e.start, e.end, e.label, round(e.score, 2)) for e in ents] for ents in res]

    ner = NERModel.from_pretrained(tiny_ner_dir, batch_size=2)
    texts = SENTS * 3 + ["", "x"]
    want = spans(ner(texts).entities)
    assert ner.stats["tokens"] > 0 and ner.stats["padded_tokens"] >= ner.stats["tokens"]
    assert spans([e for p in ner.pipe(iter(texts), chunk_size=4) for e in p.entities]) == want
    ner.sort_by_length = False
    assert spans(ner(texts).entities) == want


def test_int8_linear_is_exact_integer_math_per_token():
    """Per-token activation scales: a row's output does not depend on the other rows (torch.ao's per-tensor scale
    does), and the result is the int32 product of the quantised operands, rescaled."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24)
    x = torch.randn(5, 7, 64)
    x[0, 0] *= 50  # one large token: with a per-tensor scale it would coarsen every other token's quantisation
    q = Int8Linear(lin)
    y = q(x)
    for i in range(5):
        for j in range(7):
            assert torch.equal(q(x[i, j][None]), y[i, j][None])
    rel = ((y - lin(x)).norm() / lin(x).norm()).item()
    assert rel < 0.02, rel
    w = q.weight_t.float() * q.weight_scale
    s = x[1, 2].abs().max() / 127
    manual = torch.round(x[1, 2] / s).clamp(-127, 127) @ w * s + lin.bias
    torch.testing.assert_close(y[1, 2], manual.detach(), atol=1e-4, rtol=1e-4)


def test_int8_answers_do_not_depend_on_the_batch(tiny_ner_dir):
    """The service micro-batches unrelated requests: with per-token scales, a text alone and the same text in a
    batch get the same spans."""
    int8 = NERModel.from_pretrained(tiny_ner_dir, precision="int8")
    texts = SENTS + ["The European Commission said on Thursday it disagreed with German advice ."] * 2
    together = int8(texts).entities
    alone = [int8([t]).entities[0] for t in texts]
    key = [[(e.start, e.end, e.label) for e in ents] for ents in together]
    assert key == [[(e.start, e.end, e.label) for e in ents] for ents in alone]


def test_int8_fallback_for_a_saturating_cpu_gives_the_same_products():
    """Where torch._int_mm saturates (oneDNN without VNNI: AVX2 CPUs, .ci/run's second pass), Int8Linear multiplies
    the same int8 values in fp32. Both paths must agree: the integer products are exact in fp32 at this size."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 48)
    x = torch.randn(3, 9, 256) * 4
    q = Int8Linear(lin)
    y = q(x)
    q.weight_f = q.weight_t.float()  # the fallback, whatever this CPU does
    torch.testing.assert_close(q(x), y, atol=1e-5, rtol=1e-5)
    a = torch.randint(-127, 128, (32, 256), dtype=torch.int8)
    b = torch.randint(-127, 128, (256, 32), dtype=torch.int8)
    if int_mm_is_exact():  # the probe's verdict holds for other operands too
        assert torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
