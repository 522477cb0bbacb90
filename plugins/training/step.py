"""The object one training forward hands to loss terms, hooks and metrics.

``engine.model_outputs(batch)`` returns the step's ``outputs``: the model's torchreid training
output, or, for a method whose losses need more (attention maps, rewards, mined pairs, generated
images), a :class:`Step` subclass holding that output and the extras. Every loss term, hook stage
and metric receives this one object; nothing is written into the loader's batch.
"""
import dataclasses


@dataclasses.dataclass
class Step:
    """Base of a method's step object: ``output`` is the model's torchreid training output
    (logits, part logits, or ``(logits, features)``), which the library's generic terms and
    metrics read (:func:`model_output`). Subclasses (dataclasses) add the method's fields."""

    output: object


def model_output(outputs):
    """The model's torchreid training output within a step's ``outputs``."""
    return outputs.output if isinstance(outputs, Step) else outputs
