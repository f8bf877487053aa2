"""Human-readable class names of the in-distribution datasets, in label order."""

from __future__ import annotations

_DIGITS = tuple(str(d) for d in range(10))

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mnist": _DIGITS,
    "svhn": _DIGITS,
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}


def class_names(dataset: str, num_classes: int) -> list[str]:
    """Names of ``dataset``'s classes; numbered names where none are recorded (CIFAR-100,
    synthetic sets) so every consumer still gets one label per class."""
    names = CLASS_NAMES.get(dataset)
    if names is None or len(names) != num_classes:
        return [f"class_{k}" for k in range(num_classes)]
    return list(names)
