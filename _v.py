import jax, jax.numpy as jnp, numpy as np, brainstate, brainconv, inspect
print(inspect.signature(brainstate.transform.vmap))
conv = brainconv.Conv1d((6, 2), 3, kernel_size=2, padding='CAUSAL')
s = conv.streaming()
brainstate.nn.vmap_init_all_states(s, axis_size=4)
print(s.buffer.value.shape, conv.weight.value['weight'].shape)
x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32))
f = brainstate.transform.vmap(lambda xt: s(xt), in_states=s.states(brainstate.HiddenState), out_states=s.states(brainstate.HiddenState))
print(f(x).shape, s.buffer.value.shape)
brainstate.nn.init_all_states(s, 5)
print(s.buffer.value.shape)
s.buffer.value = s.buffer.value + 1
brainstate.nn.reset_all_states(s)
print(s.buffer.value.shape, float(jnp.abs(s.buffer.value).sum()))
