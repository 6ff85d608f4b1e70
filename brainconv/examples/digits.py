"""The digits example: data, a small CNN, and a training loop.

One copy of the code that ``python -m brainconv`` and the notebooks
(``03_vision_digits``, ``04_spiking_digits``) run.  The data set is
scikit-learn's bundled 8x8 handwritten digits (1797 images, no download);
scikit-learn is an optional dependency (``pip install brainconv[demo]``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List

import brainstate
import braintools
import jax
import jax.numpy as jnp
import numpy as np

import brainconv

__all__ = ['DEMO_INSTALL_HINT', 'Digits', 'load_digits', 'make_cnn', 'History', 'fit', 'accuracy']

DEMO_INSTALL_HINT = "the demo needs scikit-learn, matplotlib and tqdm: pip install 'brainconv[demo]'"


@dataclass(frozen=True)
class Digits:
    """Train/test split of the digits: images ``(N, 8, 8, 1)`` in [0, 1], integer labels ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """scikit-learn's 8x8 digits, split (stratified) into train and test sets.

    Raises ImportError with the install hint when scikit-learn is missing.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError(DEMO_INSTALL_HINT) from e
    data = _load()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Digits(x_train, y_train, x_test, y_test)


def make_cnn(seed: int = 0, width: int = 16, dtype: Any = None) -> brainstate.nn.Sequential:
    """A small CNN for 8x8x1 images: two 3x3 convolutions, 2x2 max pooling, a third
    convolution and a linear read-out to 10 classes.

    ``dtype`` is the convolutions' compute dtype (e.g. ``jnp.bfloat16``; weights stay
    float32); their output is cast back to float32 before the read-out.
    """
    brainstate.random.seed(seed)
    w, b = braintools.init.KaimingNormal(), braintools.init.ZeroInit()
    conv = dict(w_init=w, b_init=b, dtype=dtype)
    layers = [
        brainconv.Conv2d((8, 8, 1), width, 3, **conv),
        brainstate.nn.ReLU(),
        brainconv.Conv2d((8, 8, width), 2 * width, 3, **conv),
        brainstate.nn.ReLU(),
        brainstate.nn.MaxPool2d(2, 2, channel_axis=-1),
        brainconv.Conv2d((4, 4, 2 * width), 2 * width, 3, **conv),
        brainstate.nn.ReLU(),
    ]
    if dtype is not None:
        layers.append(_to_float32)
    return brainstate.nn.Sequential(
        *layers,
        brainstate.nn.Flatten(in_size=(4, 4, 2 * width)),
        brainstate.nn.Linear(16 * 2 * width, 10, w_init=braintools.init.XavierNormal()),
    )


def _to_float32(x: Any) -> Any:
    return x.astype(jnp.float32)


@dataclass
class History:
    """What :func:`fit` measured: one entry per epoch."""

    loss: List[float] = field(default_factory=list)
    test_accuracy: List[float] = field(default_factory=list)
    seconds: float = 0.0


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):  # drop the ragged end: one compiled shape
        yield order[start:start + batch_size]


def accuracy(logits_fn: Callable[[Any], Any], x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``logits_fn`` classifies as ``y``."""
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = logits_fn(jnp.asarray(x[start:start + batch_size]))
        correct += int(jnp.sum(jnp.argmax(logits, axis=-1) == y[start:start + batch_size]))
    return correct / len(x)


def fit(
    model: brainstate.nn.Module,
    data: Digits,
    logits_fn: Callable[[Any], Any] | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> History:
    """Train ``model`` with Adam on the cross-entropy of ``logits_fn(x)`` (default: ``model(x)``).

    The step (gradient of the loss with respect to the model's ``ParamState`` s,
    then the optimizer update) is compiled once with ``brainstate.transform.jit``.
    ``progress`` wraps the epoch range (e.g. ``tqdm.tqdm``); if what it returns
    has ``set_postfix`` it is told the loss and test accuracy after each epoch.
    """
    logits_fn = model if logits_fn is None else logits_fn
    params = model.states(brainstate.ParamState)
    optimizer = braintools.optim.Adam(lr=lr)
    optimizer.register_trainable_weights(params)

    def loss_fn(x, y):
        logits = logits_fn(x)
        return braintools.metric.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @brainstate.transform.jit
    def train_step(x, y):
        grads, loss = brainstate.transform.grad(loss_fn, params, return_value=True)(x, y)
        optimizer.update(grads)
        return loss

    predict = brainstate.transform.jit(logits_fn)
    rng = np.random.default_rng(seed)
    history = History()
    epochs_iter = range(epochs) if progress is None else progress(range(epochs))
    start = time.perf_counter()
    for _ in epochs_iter:
        losses = [train_step(jnp.asarray(data.x_train[i]), jnp.asarray(data.y_train[i]))
                  for i in _batches(len(data.x_train), batch_size, rng)]
        history.loss.append(float(np.mean(jax.device_get(losses))))
        history.test_accuracy.append(accuracy(predict, data.x_test, data.y_test))
        if hasattr(epochs_iter, 'set_postfix'):
            epochs_iter.set_postfix(loss=f'{history.loss[-1]:.3f}', test_acc=f'{history.test_accuracy[-1]:.3f}')
    history.seconds = time.perf_counter() - start
    return history

