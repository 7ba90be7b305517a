
import itertools

import pytest
import torch

from llm_ner.labels import LabelSet
from llm_ner.modeling.crf import CRF
from llm_ner.modeling.decoding import Decoder

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


def brute_force(crf, em, n):
    """All tag paths of length n: log Z and the best path, by enumeration."""
    trans, start = crf._scores()
    scores = {}
    for path in itertools.product(range(crf.num_tags), repeat=n):
        s = start[path[0]] + em[0, path[0]] + crf.end[path[-1]]
        for i in range(1, n):
            s = s + trans[path[i - 1], path[i]] + em[i, path[i]]
        scores[path] = s
    log_z = torch.logsumexp(torch.stack(list(scores.values())), 0)
    return log_z, scores, max(scores, key=lambda p: scores[p].item())


def make_crf(seed=0):
    torch.manual_seed(seed)
    ls = LabelSet.from_types(["A", "B"])  # 5 tags
    crf = CRF(len(ls), ls.allowed_transitions(), ls.allowed_starts())
    with torch.no_grad():
        crf.transitions.normal_()
        crf.start.normal_()
        crf.end.normal_()
    return crf, ls


def decoder(crf, ls):
    """Prediction decodes the trained CRF's scores in NumPy (decoding.py)."""
    return Decoder(ls, crf.tables())


def test_log_likelihood_and_viterbi_match_brute_force():
    crf, ls = make_crf()
    lengths = [4, 2, 1, 3]
    em = torch.randn(len(lengths), 4, len(ls))
    mask = torch.tensor([[i < n for i in range(4)] for n in lengths])
    tags = torch.randint(0, len(ls), (len(lengths), 4))
    tags[:, 0] = 0  # a start the constraints allow
    ll = crf.log_likelihood(em, tags, mask)
    dec = decoder(crf, ls)
    paths, _ = dec.decode(em.numpy(), mask.numpy())
    gold_paths = [tags[b, :n].tolist() for b, n in enumerate(lengths)]
    # the NumPy forward algorithm (prediction: path_logprob) gives the trained torch one's likelihood
    lp = dec.path_logprob(em.numpy(), mask.numpy(), gold_paths)
    for b, n in enumerate(lengths):
        log_z, scores, best = brute_force(crf, em[b], n)
        gold = tuple(gold_paths[b])
        torch.testing.assert_close(ll[b], scores[gold] - log_z, rtol=1e-4, atol=1e-3)
        assert lp[b] == pytest.approx(float(ll[b]), abs=1e-3)
        assert tuple(paths[b]) == best


def test_decoding_never_breaks_iob2():
    crf, ls = make_crf(1)
    em = torch.randn(64, 7, len(ls)) * 5
    em[..., 2] += 3  # push hard towards I-A everywhere
    for path in decoder(crf, ls).decode(em.numpy(), torch.ones(64, 7, dtype=torch.bool).numpy())[0]:
        tags = ls.decode(path)
        assert not tags[0].startswith("I-")
        for prev, cur in zip(tags, tags[1:], strict=False):
            if cur.startswith("I-"):
                assert prev in ("B-" + cur[2:], cur)


def test_gradients_flow_and_empty_rows():
    crf, ls = make_crf()
    em = torch.randn(2, 3, len(ls), requires_grad=True)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    ll = crf.log_likelihood(em, torch.zeros(2, 3, dtype=torch.long), mask)
    assert ll[1] == 0 and torch.isfinite(ll).all()
    (-ll.sum()).backward()
    assert em.grad.abs().sum() > 0 and crf.transitions.grad is not None


def test_span_probabilities_match_enumeration_with_temperature():
    crf, ls = make_crf(3)
    lengths = [5, 3, 1]
    em = torch.randn(3, 5, len(ls)) * 2
    mask = torch.zeros(3, 5, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    B, I_ = ls.tag2id["B-A"], ls.tag2id["I-A"]
    cases = [(0, 1, 2, [B, I_], I_), (0, 0, 0, [B], I_), (0, 4, 4, [B], I_), (0, 2, 4, [B, I_, I_], I_),
             (1, 1, 2, [B, I_], I_), (2, 0, 0, [B], I_)]
    dec = decoder(crf, ls)
    for temp in (1.0, 2.5):
        got = dec.span_scores(em.double().numpy(), mask.numpy(), [c[:4] for c in cases], None, temp)
        for (b, s, e, path, not_next), p in zip(cases, got, strict=True):
            n = lengths[b]
            trans, start = crf._scores()  # enumerate every path, each potential divided by the temperature
            scores = {}
            for path_ in itertools.product(range(crf.num_tags), repeat=n):
                sc = (start[path_[0]] + em[b, 0, path_[0]] + crf.end[path_[-1]]) / temp
                for i in range(1, n):
                    sc = sc + (trans[path_[i - 1], path_[i]] + em[b, i, path_[i]]) / temp
                scores[path_] = sc
            log_z = torch.logsumexp(torch.stack(list(scores.values())), 0)
            hit = [sc for pth, sc in scores.items()
                   if list(pth[s : e + 1]) == path and (e + 1 >= n or pth[e + 1] != not_next)]
            want = torch.exp(torch.logsumexp(torch.stack(hit), 0) - log_z).item() if hit else 0.0
            assert abs(p - want) < 1e-4, (b, s, e, temp, p, want)
