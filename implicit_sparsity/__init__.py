"""implicit-sparsity: train, measure and exploit the implicit filter-level sparsity of CNNs.

Implements Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional
Neural Networks", CVPR 2019.
"""

__version__ = "0.1.0"
