"""Turning a decoder LLM into a token classifier — the whole transformation, top to bottom.

    input_ids (B,T) ──> decoder backbone, causal mask swapped for a padding-only mask in chosen layers
                  ──> hidden states (B,T,H) (last layer, or a learned mix of several)
                  ──> dropout + linear head ──> token logits (B,T,C)
                  ──> gather each word's first sub-token ──> word logits (B,W,C)
                  ──> loss:  ce_weight * CE(label smoothing, class weights) + crf_weight * CRF NLL
                  ──> decode: constrained Viterbi (CRF) or argmax

B batch, T tokens, W words, H hidden size, C tags (O + B-/I- per type, see labels.py).

1. Unmasking. A decoder's layers see only earlier tokens; for NER the right context matters ("Washington" in
   "Washington said" vs "Washington state"). transformers builds a causal mask once and hands it to every decoder
   layer as the `attention_mask` keyword; a forward pre-hook on each chosen layer swaps it for a 4-D additive mask
   that hides only padding keys. Layers not chosen keep the causal mask, so "upper half only" is possible.
   (Passing `None` would not work: sdpa then takes `is_causal=True` — hence an all-zero mask, never None.)
   Or repetition (`transform: repeat`): the row is fed r times, [x x ... x], attention left causal, and each token is
   read from its last copy, which has seen all of x. Or both. Early exit (`exit_layer: k`): layers above k are
   dropped when the model is built, so the head reads layer k's hidden state (through the final norm).
2. Head: dropout + linear on the final hidden state (after the backbone's final norm), fp32.
3. CRF (crf.py) with transitions that IOB2 forbids fixed at -10_000, so decoding always gives well-formed spans.
4. Training modes: LoRA (peft adapters on the attention/MLP projections), full fine-tuning, or a frozen backbone
   (head + CRF only; the backbone then runs under no_grad, which is ~3x cheaper).
Decoding the word logits (Viterbi, entity scores) is `model.decoder` (decoding.py); the files of a saved model are
persistence.py's (`save_pretrained` / `from_pretrained` / `from_init` delegate to it).
"""

from __future__ import annotations

import functools
import inspect
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import TokenClassifierOutput

from ..config import ConfigError, NERConfig
from ..labels import LabelSet
from . import backbones, persistence
from .crf import CRF
from .decoding import Decoder

log = logging.getLogger(__name__)

def resolve_layers(spec: str | list[int], n_layers: int) -> list[int]:
    """Which decoder layers get bidirectional attention."""
    if isinstance(spec, list):
        layers = [i % n_layers for i in spec]
    elif spec == "all":
        layers = list(range(n_layers))
    elif spec == "none":
        layers = []
    elif spec == "upper_half":
        layers = list(range(n_layers // 2, n_layers))
    elif spec == "lower_half":
        layers = list(range(n_layers // 2))
    elif spec == "middle_third":
        layers = list(range(n_layers // 3, 2 * n_layers // 3))
    elif isinstance(spec, str) and "-" in spec:
        a, b = (int(x) for x in spec.split("-"))
        layers = list(range(a, b + 1))
    else:
        raise ConfigError(f"unmask: {spec!r} is not 'all', 'none', 'upper_half', 'lower_half', 'middle_third', "
                          "'A-B' or a list")
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ConfigError(f"unmask: layers {bad} out of range (the backbone has {n_layers} layers)")
    return sorted(set(layers))


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer blocks: `model.layers` for Llama/Mistral/Qwen/Gemma (found through peft wrappers)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "layer", "blocks") and len(mod):
            return mod
    return None


@functools.cache
def _mask_position(layer_cls: type) -> int | None:
    """Index of `attention_mask` among a decoder layer's positional arguments (self excluded), if it has one."""
    params = list(inspect.signature(layer_cls.forward).parameters)[1:]
    return params.index("attention_mask") if "attention_mask" in params else None


def segment_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,T) packed rows, 0 = pad, k >= 1 = the k-th sequence in the row -> (B,1,T,T) additive mask: a token sees
    only the tokens of its own sequence (block diagonal, no causality). Pad queries see every real key (their output
    is thrown away, but a fully masked row would make sdpa return NaN)."""
    q, k = segment_ids[:, None, :, None], segment_ids[:, None, None, :]  # (B,1,T,1), (B,1,1,T)
    keep = (k > 0) & ((q == k) | (q == 0))
    mask = torch.zeros(keep.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)


def padding_only_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,T) 1=token 0=pad -> (B,1,T,T) additive mask: every query sees every non-pad key (0), pads get -inf — the
    one-sequence-per-row case of segment_mask."""
    return segment_mask(attention_mask, dtype)


def truncate_layers(backbone: nn.Module, layers: nn.ModuleList | None, k: int) -> None:
    """Early exit: keep the first k decoder layers (in place). The backbone's final norm still runs after them."""
    n = backbone.config.num_hidden_layers
    if layers is None or not 1 <= k <= n:
        raise ConfigError(f"model.exit_layer: {k} is not between 1 and the backbone's {n} layers"
                          if layers is not None else "model.exit_layer: could not find the backbone's decoder layers")
    if k == n:
        return
    del layers[k:]
    backbone.config.num_hidden_layers = k
    if isinstance(getattr(backbone.config, "layer_types", None), list):  # Gemma 3 / Qwen: sliding or full, per layer
        backbone.config.layer_types = backbone.config.layer_types[:k]


def repeat_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, r: int):
    """Sequence repetition. (B,T) right-padded rows of lengths L_b -> (B,r*max L) rows holding each row's real tokens
    r times then padding, their mask, and (B,T) the index of each input token's last copy: (r-1)*L_b + t."""
    B, T = input_ids.shape
    lengths = attention_mask.sum(1)  # (B,)
    width = int(r * lengths.max())
    j = torch.arange(width, device=input_ids.device)[None, :]  # (1,rL)
    src = j % lengths.clamp(min=1)[:, None]  # (B,rL) which input token sits at each position
    keep = j < r * lengths[:, None]
    ids = torch.where(keep, input_ids.gather(1, src), input_ids[:, :1])  # any id: masked
    t = torch.arange(T, device=input_ids.device)[None, :]
    last = ((r - 1) * lengths[:, None] + t).clamp(max=width - 1)  # (B,T); padding tokens read something masked
    return ids, keep.long(), last


def band(mask: torch.Tensor, window: int) -> torch.Tensor:
    """(B,1,T,T) additive mask -> the same, also hiding keys `window` or more positions away (either side). In a
    packed row a sequence's tokens are contiguous, so row distance is sequence distance."""
    T = mask.size(-1)
    i = torch.arange(T, device=mask.device)
    far = (i[:, None] - i[None, :]).abs() >= window  # (T,T)
    out = mask.masked_fill(far, torch.finfo(mask.dtype).min)
    # A padding query farther than `window` from every real token would see no key at all: sdpa gives NaN there, and
    # a NaN in a pad row reaches real tokens in the next layer (0 * NaN). Let such rows see everything (discarded).
    dead = (out == torch.finfo(mask.dtype).min).all(-1, keepdim=True)  # (B,1,T,1)
    return out.masked_fill(dead, 0.0)


class LLMForTokenClassification(nn.Module):
    def __init__(self, config: NERConfig, backbone: nn.Module):
        super().__init__()
        self.config = config
        self.labels = LabelSet.from_dict(config.labels)
        m = config.model
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        n_tags = len(self.labels)

        # --- 0. early exit: keep the first exit_layer decoder layers ---
        layers = decoder_layers(backbone)
        if m.exit_layer is not None:
            truncate_layers(backbone, layers, m.exit_layer)
        if m.transform == "repeat":
            max_pos = getattr(backbone.config, "max_position_embeddings", None) or 10**9
            if m.repeat * m.max_length > max_pos:
                raise ConfigError(f"model.repeat {m.repeat} x model.max_length {m.max_length} exceeds the backbone's "
                                  f"{max_pos} positions; lower model.max_length")

        # --- 1. bidirectional attention in the chosen layers ---
        n_layers = backbone.config.num_hidden_layers
        self.unmasked_layers = resolve_layers(m.unmask, n_layers) if layers is not None else []
        if layers is None and m.unmask not in ("none", []):
            raise ConfigError("unmask: could not find the backbone's decoder layers; use unmask: none")
        # Sliding-window layers (Gemma 3 alternates them with global ones) stay windowed: unmasked, a token sees the
        # keys within the window on both sides (|q - k| < window), as transformers' own bidirectional Gemma 3 does.
        types = getattr(backbone.config, "layer_types", None) or []
        self.sliding_window = getattr(backbone.config, "sliding_window", None)
        self.sliding_layers = [i for i, t in enumerate(types) if t == "sliding_attention" and self.sliding_window]
        self._mask: torch.Tensor | None = None  # (B,1,T,T), set at each forward, read by the hooks
        self._band_mask: torch.Tensor | None = None  # the same within the sliding window only
        for i in self.unmasked_layers:
            layers[i].register_forward_pre_hook(
                self._swap_band_mask if i in self.sliding_layers else self._swap_mask, with_kwargs=True)

        # --- 2. head ---
        self.layer_mix = nn.Parameter(torch.zeros(len(m.head_layers))) if len(m.head_layers) > 1 else None
        self.dropout = nn.Dropout(m.head_dropout)
        self.classifier = nn.Linear(hidden, n_tags)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

        # --- 3. CRF with IOB2 constraints ---
        self.crf = (CRF(n_tags, self.labels.allowed_transitions(), self.labels.allowed_starts())
                    if m.crf else None)
        # Per-class weights for the cross-entropy (all 1 unless train.py sets "balanced" weights).
        self.register_buffer("ce_weights", torch.ones(n_tags))
        # The backbone's weights are no longer model.backbone's (continued from a fine-tuned model): saving must then
        # write them in full, whatever the mode (`from_init`).
        self.backbone_changed = False

    @property
    def packable(self) -> bool:
        """Can several sequences share a row? Only if every layer takes our mask (a causal layer would need its own
        block-causal mask from the backbone)."""
        return (len(self.unmasked_layers) == self.backbone.config.num_hidden_layers
                and self.config.model.transform != "repeat")

    @property
    def length_factor(self) -> int:
        """Tokens the backbone sees per input token (prediction sizes its batches by it)."""
        m = self.config.model
        return m.repeat if m.transform == "repeat" else 1

    def _swap_mask(self, module, args, kwargs, mask: torch.Tensor | None = None):
        mask = self._mask if mask is None else mask
        if mask is not None:
            # Llama-style layers get the mask as a keyword; BERT-style ones positionally (after hidden_states)
            pos = _mask_position(type(module))
            if pos is not None and len(args) > pos:
                args = (*args[:pos], mask, *args[pos + 1 :])
            else:
                kwargs["attention_mask"] = mask
        return args, kwargs

    def _swap_band_mask(self, module, args, kwargs):
        return self._swap_mask(module, args, kwargs, self._band_mask)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, segment_ids: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B,T) tokens -> (B,T,H) fp32 hidden states as the head reads them: the transformed attention, the chosen
        layer(s), each token's last copy under repetition. Adaptation (training/adapt.py) trains through this too."""
        dtype = self.backbone.get_input_embeddings().weight.dtype
        last_copy = None
        if self.length_factor > 1:
            input_ids, attention_mask, last_copy = repeat_rows(input_ids, attention_mask, self.length_factor)
        if segment_ids is not None:
            # Several short sequences share one row; a block-diagonal mask in every layer keeps them apart, and
            # position_ids restart for each, so each is computed exactly as if it had its own row — minus the padding.
            if not self.packable:
                raise ValueError("packed rows need bidirectional attention in every layer (unmask: all)")
            self._mask = segment_mask(segment_ids, dtype)
        else:
            self._mask = padding_only_mask(attention_mask, dtype) if self.unmasked_layers else None
        self._band_mask = (band(self._mask, self.sliding_window)
                           if self._mask is not None and set(self.sliding_layers) & set(self.unmasked_layers) else None)
        head_layers = self.config.model.head_layers
        want_all = head_layers != [-1]
        frozen = self.config.mode == "frozen" and not any(p.requires_grad for p in self.backbone.parameters())
        with torch.no_grad() if frozen else nullcontext():
            extra = {} if position_ids is None else {"position_ids": position_ids}
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_all,
                                **extra)
        if want_all:
            states = torch.stack([out.hidden_states[i] for i in head_layers])  # (K,B,T,H)
            h = (F.softmax(self.layer_mix, 0)[:, None, None, None] * states.float()).sum(0)
        else:
            h = out.last_hidden_state.float()  # (B,T,H)
        if last_copy is not None:  # (B,rT,H) -> (B,T,H): each token's last copy
            h = h.gather(1, last_copy.unsqueeze(-1).expand(-1, -1, h.size(-1)))
        return h

    # ------------------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,  # (B,T)
        attention_mask: torch.Tensor,  # (B,T) 1 = token, 0 = pad (right padding)
        word_positions: torch.Tensor,  # (B,W) index of each word's first sub-token
        word_mask: torch.Tensor,  # (B,W) 1 = real word
        labels: torch.Tensor | None = None,  # (B,W) tag ids, -100 = ignore
        token_labels: torch.Tensor | None = None,  # (B,T) tag ids per sub-token (label_all_subtokens), -100 = ignore
        segment_ids: torch.Tensor | None = None,  # (B,T) packed rows (inference): 0 = pad, k = k-th sequence
        position_ids: torch.Tensor | None = None,  # (B,T) positions restarting at 0 for each packed sequence
        loss_denominators: torch.Tensor | None = None,  # (2,) of the whole batch when this is one pass of it
    ) -> TokenClassifierOutput:
        h = self.encode(input_ids, attention_mask, segment_ids, position_ids)  # (B,T,H)
        logits = self.classifier(self.dropout(h))  # (B,T,C)
        C = logits.size(-1)
        word_logits = logits.gather(1, word_positions.unsqueeze(-1).expand(-1, -1, C))  # (B,W,C)

        loss = None
        if labels is not None:
            den = self.loss_denominators(word_mask, labels, token_labels) if loss_denominators is None \
                else loss_denominators
            loss = self.compute_loss(logits, word_logits, word_mask, labels, token_labels, den)
        return TokenClassifierOutput(loss=loss, logits=word_logits)

    def _ce_on_subtokens(self, token_labels: torch.Tensor | None) -> bool:
        """The cross-entropy scores every sub-token (label_all_subtokens), not each word's first one."""
        return self.config.model.label_all_subtokens and token_labels is not None

    def loss_denominators(self, word_mask, labels, token_labels=None) -> torch.Tensor:
        """(2,): what the loss of this batch is divided by — the cross-entropy's summed class weights over its
        labelled positions (torch's weighted mean) and the CRF's labelled word count. Training in several passes
        per batch (training.max_tokens_per_pass) gives every pass the whole batch's, so the passes' losses sum to
        the whole batch's loss and their gradients to its gradient."""
        dev = self.ce_weights.device
        lb = (token_labels if self._ce_on_subtokens(token_labels) else labels).reshape(-1).to(dev)
        ce_den = self.ce_weights[lb[lb >= 0]].sum()
        crf_den = (word_mask.bool() & (labels >= 0)).sum().to(dev)
        return torch.stack([ce_den.float(), crf_den.float()]).clamp(min=1)

    def compute_loss(self, logits, word_logits, word_mask, labels, token_labels, den) -> torch.Tensor:
        """Sums divided by `den` (loss_denominators): a per-position weighted mean, as F.cross_entropy's."""
        cfg = self.config.loss
        loss = word_logits.new_zeros(())
        if cfg.ce_weight:
            lg, lb = (logits, token_labels) if self._ce_on_subtokens(token_labels) else (word_logits, labels)
            ce = F.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), weight=self.ce_weights,
                                 ignore_index=-100, label_smoothing=cfg.label_smoothing, reduction="sum") / den[0]
            loss = loss + cfg.ce_weight * ce
        if self.crf is not None and cfg.crf_weight:
            m = word_mask.bool() & (labels >= 0)
            # NLL per word (not per sentence) so its scale matches the cross-entropy's.
            nll = -self.crf.log_likelihood(word_logits, labels.clamp(min=0), m).sum() / den[1]
            loss = loss + cfg.crf_weight * nll
        return loss

    # ------------------------------------------------------------------------------------------------------------
    # construction, training modes, save / load

    @classmethod
    def from_backbone(cls, config: NERConfig, dtype=None) -> LLMForTokenClassification:
        """A fresh model for training: load the backbone and set it up for config.mode."""
        m = config.model
        backbone = backbones.load(m.backbone, m.gguf_file, m.attn_implementation, m.trust_remote_code, dtype)
        model = cls(config, backbone)
        model.setup_mode()
        return model

    def setup_mode(self) -> None:
        mode = self.config.mode
        if mode == "full":
            self.backbone.requires_grad_(True)
            if not self.config.model.train_embeddings:
                # The input embeddings are 21 % of SmolLM2's weights, yet a batch touches ~100 of their 49k rows:
                # their dense gradient and AdamW update cost ~8 % of a CPU training step (profiled: batch 8, bf16).
                self.backbone.get_input_embeddings().weight.requires_grad_(False)
            self._freeze_lower_layers(self.config.model.freeze_layers)
        elif mode == "frozen":
            self.backbone.requires_grad_(False)
        elif mode == "lora":
            from peft import LoraConfig, get_peft_model

            lo = self.config.lora
            wanted = lo.targets or list(backbones.family(self.backbone.config.model_type).lora_targets)
            targets = [t for t in wanted if any(n.endswith(t) for n, _ in self.backbone.named_modules())]
            if not targets:
                raise ConfigError(f"training.lora.targets {wanted} match no module of the backbone")
            lcfg = LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=targets)
            self.backbone = get_peft_model(self.backbone, lcfg)
        else:
            raise ValueError(f"mode must be lora, full or frozen, not {mode!r}")

    def _freeze_lower_layers(self, k: int) -> None:
        """The first k decoder layers keep their pre-trained weights; above them everything trains."""
        if not k:
            return
        layers = decoder_layers(self.backbone)
        if layers is None or k > len(layers):
            raise ConfigError(f"model.freeze_layers: {k} is more than the backbone's {len(layers)} layers"
                              if layers is not None else "model.freeze_layers: could not find the decoder layers")
        for layer in layers[:k]:
            layer.requires_grad_(False)

    def parameter_counts(self) -> dict[str, int]:
        return {"total": sum(p.numel() for p in self.parameters()),
                "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad)}

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    @property
    def decoder(self) -> Decoder:
        """Word logits -> tags and scores (decoding.py), over this model's labels and CRF."""
        return Decoder(self.labels, self.crf.tables() if self.crf is not None else None)

    # save / load: persistence.py (the files of a model dir)
    def save_pretrained(self, path: str | Path, tokenizer=None, merge_lora: bool = False) -> None:
        persistence.save(self, path, tokenizer, merge_lora)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, trust_remote_code: bool = False,
                        dtype=None) -> LLMForTokenClassification:
        return persistence.load(cls, path, device, trust_remote_code, dtype)

    @classmethod
    def from_init(cls, path: str | Path, config: NERConfig, dtype=None) -> LLMForTokenClassification:
        return persistence.load_to_continue(cls, path, config, dtype)
