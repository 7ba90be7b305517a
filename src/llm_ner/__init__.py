"""llm-ner: turn a decoder LLM into a named-entity recogniser (bidirectional attention + token head + CRF)."""

__version__ = "0.1.0"

__all__ = ["NERModel", "LLMForTokenClassification", "NERConfig", "__version__"]


def __getattr__(name: str):  # lazy: `import llm_ner` stays fast and torch-free until a model is needed
    if name == "NERModel":
        from .inference.engine import NERModel

        return NERModel
    if name in ("LLMForTokenClassification", "NERConfig"):
        from .modeling import model

        return getattr(model, name)
    raise AttributeError(name)
