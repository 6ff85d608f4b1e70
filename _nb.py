import time
t0=time.time()
import brainstate, braintools, brainunit as u, jax, jax.numpy as jnp, numpy as np
import brainconv
try:
    from brainpy.state import LIF as _BrainpyLIF
except ImportError:
    _BrainpyLIF = None
print('brainpy.state LIF' if _BrainpyLIF else 'minimal LIF')

class MinimalLIF(brainstate.nn.Dynamics):
    def __init__(self, in_size, tau=2.0, v_th=1.0, spk_fun=braintools.surrogate.ReluGrad()):
        super().__init__(in_size)
        self.decay = float(np.exp(-1.0 / tau))   # dt = 1 ms
        self.v_th = v_th
        self.spk_fun = spk_fun
    def init_state(self, batch_size=None, **kwargs):
        self.V = brainstate.HiddenState(jnp.zeros((batch_size,) + self.in_size if batch_size else self.in_size))
    def reset_state(self, batch_size=None, **kwargs):
        self.V.value = jnp.zeros_like(self.V.value)
    def update(self, x):
        v = self.V.value
        v = v - self.v_th * self.spk_fun(v / self.v_th - 1.0)
        v = x + (v - x) * self.decay
        self.V.value = v
        return self.spk_fun(v / self.v_th - 1.0)

T, N_IN, DELAY = 60, 4, 8
def make_data(n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.random((T, n, N_IN)) < 0.02).astype(np.float32)
    y = rng.integers(0, 2, n)
    t0 = rng.integers(2, T - DELAY - 2, n)
    first, second = np.where(y == 0, 0, 1), np.where(y == 0, 1, 0)
    x[t0, np.arange(n), first] = 1.0
    x[t0 + DELAY, np.arange(n), second] = 1.0
    return jnp.asarray(x), jnp.asarray(y)

class Net(brainstate.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        brainstate.random.seed(seed)
        conv = brainconv.Conv1d((T, N_IN), 2, kernel_size=5, rhs_dilation=2, padding='CAUSAL',
                                w_init=braintools.init.Normal(0.5, 0.5))
        self.filter = conv.streaming()
        if _BrainpyLIF is not None:
            self.lif = _BrainpyLIF(2, tau=2.0 * u.ms, V_th=1.0 * u.mV)
        else:
            self.lif = MinimalLIF(2)
    def update(self, x_t):
        i = self.filter(x_t)
        return self.lif(i * u.mA if _BrainpyLIF is not None else i)
    def simulate(self, xs):
        brainstate.nn.reset_all_states(self)
        return brainstate.transform.for_loop(self.update, xs)

brainstate.environ.set(dt=1.0 * u.ms)
net = Net()
x_train, y_train = make_data(256, 0)
x_test, y_test = make_data(256, 1)
brainstate.nn.init_all_states(net, 64)
print(brainconv.summary(net))
params = net.states(brainstate.ParamState)
opt = braintools.optim.Adam(lr=5e-2)
opt.register_trainable_weights(params)
def loss_fn(xs, y):
    counts = net.simulate(xs).sum(0)
    loss = braintools.metric.softmax_cross_entropy_with_integer_labels(counts, y).mean()
    return loss, (loss, counts)
@brainstate.transform.jit
def train_step(xs, y):
    grads, (loss, counts) = brainstate.transform.grad(loss_fn, params, has_aux=True)(xs, y)
    opt.update(grads)
    return loss, jnp.mean(jnp.argmax(counts, -1) == y)
for ep in range(60):
    for b in range(4):
        loss, acc = train_step(x_train[:, b*64:(b+1)*64], y_train[b*64:(b+1)*64])
    if ep % 10 == 0: print(ep, float(loss), float(acc))
print(time.time()-t0)
