"""Models written plainly, as a user would, in Linen and in NNX (they know nothing of q4lab)."""

import flax.linen as nn
from flax import nnx


class UserCNN(nn.Module):
    """A Linen model that knows nothing of q4lab: 2-D conv, Dense, DenseGeneral and Einsum."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))  # K = 3*3*4
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), padding="VALID")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16)(x))
        x = nn.DenseGeneral((2, 8), name="split")(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        x = nn.Einsum((16, 8), "bi,io->bo", name="mix")(x)
        return nn.Dense(5, name="head")(x)


class UserNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(4, 8, kernel_size=(3,), rngs=rngs)
        self.fc = nnx.Linear(8 * 10, 16, rngs=rngs)
        self.head = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv(x)).reshape(x.shape[0], -1)
        return self.head(nnx.relu(self.fc(h)))
