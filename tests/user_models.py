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


class UserBERT(nn.Module):
    """A BERT-style Linen encoder called as ``model.apply(params, ids, mask)``."""

    vocab: int = 50
    width: int = 32

    @nn.compact
    def __call__(self, ids, mask):
        x = nn.Embed(self.vocab, self.width, name="embed")(ids)
        x = nn.Dense(self.width, name="stem")(x)
        q, k, v = (nn.Dense(self.width, name=n)(x) for n in ("query", "key", "value"))
        logits = (q @ k.transpose(0, 2, 1)) / self.width**0.5
        logits = logits + (1.0 - mask[:, None, :]) * -1e9
        x = x + nn.Dense(self.width, name="out")(nn.softmax(logits) @ v)
        x = x + nn.Dense(self.width, name="down")(nn.gelu(nn.Dense(64, name="up")(x)))
        return nn.Dense(3, name="head")(x[:, 0])


class UserNNXKeywords(nnx.Module):
    """An NNX MLP called with keyword inputs: ``model(features=x, scale=s)``."""

    def __init__(self, rngs: nnx.Rngs):
        self.first = nnx.Linear(16, 32, rngs=rngs)
        self.middle = nnx.Linear(32, 32, rngs=rngs)
        self.last = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, *, features, scale):
        h = nnx.relu(self.first(features * scale))
        return self.last(nnx.relu(self.middle(h)))


class UserBNCNN(nn.Module):
    """A Linen CNN with batch normalization: its variables hold ``batch_stats`` beside
    ``params`` (inference: running averages)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3,), padding="SAME", use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        return nn.Dense(5, name="head")(x.reshape(x.shape[0], -1))


class UserBNNNX(nnx.Module):
    """`UserBNCNN` in NNX: its state holds ``BatchStat`` variables beside ``Param`` ones."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(4, 8, kernel_size=(3,), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(8 * 10, 5, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn(self.conv(x)))
        return self.head(h.reshape(x.shape[0], -1))
