"""The transformation itself, on a tiny random Llama built in code."""

import pytest
import torch
from tiny import ner_config

from llm_ner.data import Sentence
from llm_ner.labels import LabelSet
from llm_ner.modeling.model import LLMForTokenClassification, resolve_layers
from llm_ner.modeling.persistence import ModelLoadError
from llm_ner.modeling.processor import collate, encode_sentences, to_tensors, window_feature

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


LABELS = LabelSet.from_types(["PER", "LOC"])


def build(tiny_llama, **kw) -> LLMForTokenClassification:
    torch.manual_seed(0)
    cfg = ner_config(LABELS, str(tiny_llama), **kw)
    return LLMForTokenClassification.from_backbone(cfg).eval()


def batch_for(tok, sentences, with_labels=False):
    sents = [Sentence(s.split(), ["O"] * len(s.split())) for s in sentences]
    wins = encode_sentences(tok, sents, LABELS.encode if with_labels else None, 128, 16)
    return to_tensors(collate([window_feature(w) for w in wins], tok.pad_token_id))


def head_input(model, batch):
    """What the head sees (B,W,H): each word's hidden state, via a hook on the head's dropout."""
    seen = {}
    h = model.dropout.register_forward_hook(lambda m, i, o: seen.setdefault("h", o))
    with torch.no_grad():
        model(**batch)
    h.remove()
    return seen["h"]


def first_word_hidden(model, batch):
    """Hidden state of the first word's first token."""
    return head_input(model, batch)[:, 0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_unmasking_lets_later_tokens_change_earlier_states(tiny_llama, tiny_tokenizer, attn):
    a = batch_for(tiny_tokenizer, ["Peter visited London today ."])
    b = batch_for(tiny_tokenizer, ["Peter visited London yesterday !"])
    causal = build(tiny_llama, unmask="none", attn_implementation=attn)
    assert torch.allclose(first_word_hidden(causal, a), first_word_hidden(causal, b), atol=1e-6)
    bidir = build(tiny_llama, unmask="all", attn_implementation=attn)
    assert not torch.allclose(first_word_hidden(bidir, a), first_word_hidden(bidir, b), atol=1e-4)


def test_per_layer_unmasking_touches_only_chosen_layers(tiny_llama, tiny_tokenizer):
    a = batch_for(tiny_tokenizer, ["Peter visited London today ."])
    b = batch_for(tiny_tokenizer, ["Peter visited London yesterday !"])
    model = build(tiny_llama, unmask=[3])  # only the top layer of 4 sees the future
    assert model.unmasked_layers == [3]

    def states(batch):
        with torch.no_grad():
            model._mask = None
            from llm_ner.modeling.model import padding_only_mask

            model._mask = padding_only_mask(batch["attention_mask"], torch.float32)
            out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 output_hidden_states=True)
        return out.hidden_states

    ha, hb = states(a), states(b)
    # Outputs of layers 0..2 (hidden_states[1..3]) at position 0 are causal: unchanged by later tokens.
    for i in (1, 2, 3):
        assert torch.allclose(ha[i][:, 0], hb[i][:, 0], atol=1e-6), i
    assert not torch.allclose(ha[4][:, 0], hb[4][:, 0], atol=1e-4)


def test_padding_is_still_masked(tiny_llama, tiny_tokenizer):
    model = build(tiny_llama, unmask="all")
    alone = batch_for(tiny_tokenizer, ["Peter visited London ."])
    padded = batch_for(tiny_tokenizer, ["Peter visited London .", "a much longer sentence that forces lots of padding"])
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]
    with torch.no_grad():
        la = model(**alone).logits[0, :4]
        lp = model(**padded).logits[0, :4]
    torch.testing.assert_close(la, lp, atol=1e-5, rtol=1e-4)


def test_resolve_layers():
    assert resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers("upper_half", 4) == [2, 3]
    assert resolve_layers("1-2", 4) == [1, 2]
    assert resolve_layers("middle_third", 30) == list(range(10, 20))
    assert resolve_layers([-1], 4) == [3]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers("2-9", 4)


def test_compound_loss_components(tiny_llama, tiny_tokenizer):
    sents = [Sentence(["Peter", "visited", "London"], ["B-PER", "O", "B-LOC"])]
    feats = [window_feature(w) for w in encode_sentences(tiny_tokenizer, sents, LABELS.encode, 64, 8)]
    batch = to_tensors(collate(feats, tiny_tokenizer.pad_token_id))
    losses = {}
    for name, kw in {"ce": dict(crf_weight=0.0), "crf": dict(ce_weight=0.0), "both": {},
                     "smooth": dict(crf_weight=0.0, label_smoothing=0.2)}.items():
        m = build(tiny_llama, **kw)
        losses[name] = m(**batch).loss.item()
    assert losses["both"] == pytest.approx(losses["ce"] + losses["crf"], rel=1e-5)
    assert losses["smooth"] != pytest.approx(losses["ce"])
    no_crf = build(tiny_llama, crf=False)
    assert no_crf.crf is None and no_crf(**batch).loss.item() == pytest.approx(losses["ce"], rel=1e-5)


def test_layer_mix_head(tiny_llama, tiny_tokenizer):
    m = build(tiny_llama, head_layers=[-1, -2, 2])
    assert m.layer_mix.shape == (3,)
    out = m(**batch_for(tiny_tokenizer, ["Peter visited London"], with_labels=False))
    assert out.logits.shape == (1, 3, len(LABELS))


@pytest.mark.parametrize("mode", ["lora", "full", "frozen"])
def test_modes_and_save_load_roundtrip(tiny_llama, tiny_tokenizer, tmp_path, mode):
    model = build(tiny_llama, mode=mode, lora_r=4, lora_alpha=8)
    counts = model.parameter_counts()
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    if mode == "frozen":
        assert counts["trainable"] == head
    elif mode == "lora":
        assert head < counts["trainable"] < counts["total"] / 2
    else:
        assert counts["trainable"] == counts["total"]
    with torch.no_grad():  # move weights away from their initial values so a bad reload would show
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    batch = batch_for(tiny_tokenizer, ["Peter visited London", "EU rejects German call"])
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"llm_ner_config.json", "head.safetensors", "tokenizer.json"} <= files
    assert ("adapter" in files) == (mode == "lora") and ("backbone" in files) == (mode == "full")
    assert not list((tmp_path / "m").rglob("*.bin")) and not list((tmp_path / "m").rglob("*.pt"))
    loaded = LLMForTokenClassification.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        after = loaded(**batch).logits
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-4)
    if mode == "lora":  # merged export gives the same outputs without peft at load time
        model.save_pretrained(tmp_path / "merged", merge_lora=True)
        merged = LLMForTokenClassification.from_pretrained(tmp_path / "merged")
        assert merged.config.backbone_saved == "full"
        with torch.no_grad():
            torch.testing.assert_close(before, merged(**batch).logits, atol=1e-4, rtol=1e-3)


def test_corrupt_model_dir_is_a_clear_error(tiny_llama, tiny_tokenizer, tmp_path):
    with pytest.raises(ModelLoadError, match="llm_ner_config.json missing"):
        LLMForTokenClassification.from_pretrained(tmp_path)
    m = build(tiny_llama, mode="frozen")
    m.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "head.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        LLMForTokenClassification.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "llm_ner_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt config"):
        LLMForTokenClassification.from_pretrained(tmp_path / "m")


def test_pickle_weights_are_refused(tiny_llama, tmp_path):
    """Only safetensors are loaded: a backbone shipped as a pickle (pytorch_model.bin) is an error, never unpickled."""
    from safetensors.torch import load_file

    build(tiny_llama, mode="full").save_pretrained(tmp_path / "m")
    bb = tmp_path / "m" / "backbone"
    torch.save(load_file(bb / "model.safetensors"), bb / "pytorch_model.bin")
    (bb / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="cannot load model") as e:
        LLMForTokenClassification.from_pretrained(tmp_path / "m")
    print(e.value)


def test_remote_code_never_runs_unless_allowed(tiny_llama, tmp_path):
    """A backbone config pointing at custom code (auto_map) must not execute it with the default
    trust_remote_code=False: loading fails cleanly and the code's side effect never happens."""
    import json

    build(tiny_llama, mode="full").save_pretrained(tmp_path / "m")
    bb = tmp_path / "m" / "backbone"
    marker = tmp_path / "code_ran"
    (bb / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((bb / "config.json").read_text())
    cfg.update(model_type="evil_model", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (bb / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="trust_remote_code") as e:
        LLMForTokenClassification.from_pretrained(tmp_path / "m")
    print(e.value)
    assert not marker.exists()


def test_unmasking_hook_works_on_bert_style_layers():
    """BERT-style layers take the attention mask positionally, Llama-style ones as a keyword; the hook must replace
    it either way. BERT is already bidirectional, so "unmask all" must give exactly what its own mask gives — and it
    makes the model packable (several sentences per row)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bb = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              vocab_size=100)).eval()
    labels = LabelSet.from_types(["PER"]).to_dict()
    unmasked = LLMForTokenClassification(ner_config(labels, "x", unmask="all"), bb).eval()
    own = LLMForTokenClassification(ner_config(labels, "x", unmask="none"), bb).eval()
    own.classifier.load_state_dict(unmasked.classifier.state_dict())
    ids = torch.randint(1, 100, (2, 6))
    am = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    wp = torch.tensor([[0, 2, 4], [0, 1, 3]])
    kw = dict(input_ids=ids, attention_mask=am, word_positions=wp, word_mask=torch.ones(2, 3, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(unmasked(**kw).logits, own(**kw).logits, atol=1e-5, rtol=1e-5)
    assert unmasked.packable and not own.packable


def test_full_fine_tuning_can_keep_the_input_embeddings_frozen(tiny_llama):
    model = build(tiny_llama, train_embeddings=False)
    emb = model.backbone.get_input_embeddings().weight
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not emb.requires_grad and "backbone.layers.0.self_attn.q_proj.weight" in trainable
    assert model.parameter_counts()["trainable"] == model.parameter_counts()["total"] - emb.numel()


def test_freeze_layers_keeps_the_lower_layers_as_pretrained(tiny_llama, tiny_tokenizer):
    """model.freeze_layers: the first N decoder layers get no gradient (with frozen embeddings the backward stops
    at layer N), every layer above and the head still learn; more layers than the backbone has is a ConfigError."""
    from llm_ner.config import ConfigError
    from llm_ner.modeling.model import decoder_layers

    model = build(tiny_llama, train_embeddings=False, freeze_layers=1).train()
    layers = decoder_layers(model.backbone)
    batch = batch_for(tiny_tokenizer, ["Peter visited London", "Anna met Paul in Paris"], with_labels=True)
    model(**batch).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in layers[0].parameters())
    assert all(p.grad is not None for p in layers[1].parameters())
    assert model.classifier.weight.grad is not None
    with pytest.raises(ConfigError, match="freeze_layers"):
        build(tiny_llama, freeze_layers=len(layers) + 1)
    with pytest.raises(ConfigError, match="model.freeze_layers applies to training.mode full, not lora"):
        build(tiny_llama, mode="lora", freeze_layers=1)  # it would be ignored: refused, not read wrong in silence


def test_a_batch_in_passes_has_the_batchs_loss_and_gradient(tiny_llama, tiny_tokenizer):
    """training.max_tokens_per_pass: a step's batch split into passes (each its own forward and backward) gives the
    one-pass loss and gradient — with class weights, label smoothing and the CRF all in play."""
    import torch.nn.functional as F

    from llm_ner.modeling.processor import split_batch

    words = ["Peter", "visited", "London", "and", "met", "Anna", "in", "Paris", "last", "week"]
    sents = [Sentence(words[:n], (["B-PER", "O", "B-LOC"] + ["O"] * 7)[:n]) for n in (10, 3, 7, 2, 9, 5)]
    feats = [window_feature(w) for w in encode_sentences(tiny_tokenizer, sents, LABELS.encode, 64, 8)]
    batch = to_tensors(collate(feats, tiny_tokenizer.pad_token_id))
    m = build(tiny_llama, label_smoothing=0.1, head_dropout=0.0)
    with torch.no_grad():
        m.ce_weights.copy_(torch.linspace(0.5, 2.0, len(m.ce_weights)))
    out = m(**batch)
    lab, wm = batch["labels"], batch["word_mask"].bool() & (batch["labels"] >= 0)
    ce = F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), lab.reshape(-1), weight=m.ce_weights,
                         ignore_index=-100, label_smoothing=0.1)  # torch's own weighted mean: the loss as defined
    crf = -m.crf.log_likelihood(out.logits, lab.clamp(min=0), wm).sum() / wm.sum()
    assert out.loss.item() == pytest.approx((ce + crf).item(), rel=1e-5)
    out.loss.backward()
    whole = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    passes = split_batch(batch, max_tokens=3 * batch["input_ids"].size(1) // 2)
    assert len(passes) > 2 and sum(p["input_ids"].size(0) for p in passes) == len(sents)
    den = m.loss_denominators(batch["word_mask"], batch["labels"])
    total = sum(m(**p, loss_denominators=den).loss for p in passes)
    total.backward()
    assert total.item() == pytest.approx(out.loss.item(), rel=1e-5)
    for n, g in whole.items():
        assert torch.allclose(dict(m.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-6), n


def test_split_batch_bounds_each_pass_and_keeps_every_row_once(tiny_tokenizer):
    from llm_ner.modeling.processor import split_batch

    sents = [Sentence(["w"] * n, ["O"] * n) for n in (1, 12, 4, 30, 7, 7, 2)]
    feats = [window_feature(w) for w in encode_sentences(tiny_tokenizer, sents, LABELS.encode, 64, 8)]
    batch = to_tensors(collate(feats, tiny_tokenizer.pad_token_id))
    lengths = sorted(batch["attention_mask"].sum(1).tolist())
    longest = lengths[-1]
    for budget in (1, longest, 2 * longest, 10**6):
        passes = split_batch(batch, budget)
        got = sorted(int(x) for p in passes for x in p["attention_mask"].sum(1))
        assert got == lengths  # every row exactly once
        for p in passes:
            n, t = p["input_ids"].shape
            assert t == int(p["attention_mask"].sum(1).max())  # trimmed to its own longest row
            assert n * t <= budget or n == 1
            assert p["labels"].shape == p["word_mask"].shape == p["word_positions"].shape
    assert split_batch(batch, 10**6) == [batch]
