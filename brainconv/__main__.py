"""``python -m brainconv``: train the digits CNN and report.

Prints the network's summary (worked out without running it), trains it on
scikit-learn's bundled 8x8 digits with a progress bar, and prints the test
accuracy.  Needs the ``demo`` extra: ``pip install 'brainconv[demo]'``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m brainconv', description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=20, help='training epochs (default 20)')
    parser.add_argument('--seed', type=int, default=0, help='seed for the split, weights and batches')
    parser.add_argument('--dtype', choices=('float32', 'bfloat16', 'float16'), default=None,
                        help="the convolutions' compute dtype (16-bit accumulates in float32; weights stay float32)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be a positive int, got {args.epochs}")

    missing = [name for name in ('sklearn', 'tqdm') if importlib.util.find_spec(name) is None]
    if missing:
        from brainconv.examples.digits import DEMO_INSTALL_HINT
        print(f"missing {', '.join(missing)}: {DEMO_INSTALL_HINT}", file=sys.stderr)
        return 1

    from tqdm import tqdm

    import brainconv
    from brainconv.examples import digits

    data = digits.load_digits(seed=args.seed)
    print(f'digits: {len(data.x_train)} training and {len(data.x_test)} test images of 8x8 pixels')
    model = digits.make_cnn(seed=args.seed, dtype=args.dtype)
    print(brainconv.summary(model))
    print()
    history = digits.fit(model, data, epochs=args.epochs, seed=args.seed,
                         progress=lambda epochs: tqdm(epochs, desc='training', unit='epoch'))
    print(f'test accuracy: {history.test_accuracy[-1]:.2%} after {args.epochs} epochs '
          f'({history.seconds:.1f} s of training)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
