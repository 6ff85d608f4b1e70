import time, statistics, jax, jax.numpy as jnp, numpy as np
from jax import lax
B,T,C,K,D=32,1000,64,9,4; L=(K-1)*D; S=L+1
xs=jnp.asarray(np.random.default_rng(0).standard_normal((T,B,C)).astype(np.float32))
w=jnp.asarray(np.random.default_rng(1).standard_normal((K,C,C)).astype(np.float32))*0.05
back=jnp.asarray(D*np.arange(K-1,-1,-1),jnp.int32)
def ring_span(w,xs):
    def body(c,xt):
        buf,pos=c
        buf=lax.dynamic_update_index_in_dim(buf,xt,pos,axis=1)
        taps=jnp.take(buf,(pos-back)%S,axis=1,mode='clip')
        return (buf,(pos+1)%S), taps.reshape(B,-1)@w.reshape(-1,C)
    return lax.scan(body,(jnp.zeros((B,S,C)),jnp.int32(0)),xs)[1]
def shift(w,xs):
    def body(buf,xt):
        win=jnp.concatenate([buf,xt[:,None]],axis=1); taps=win[:,::D]
        return win[:,1:], taps.reshape(B,-1)@w.reshape(-1,C)
    return lax.scan(body,jnp.zeros((B,L,C)),xs)[1]
def shift_gather(w,xs):
    def body(buf,xt):
        taps=jnp.concatenate([buf[:,::D],xt[:,None]],axis=1)
        return jnp.concatenate([buf[:,1:],xt[:,None]],axis=1), taps.reshape(B,-1)@w.reshape(-1,C)
    return lax.scan(body,jnp.zeros((B,L,C)),xs)[1]
def full(w,xs):
    x=jnp.moveaxis(xs,0,1)
    return lax.conv_general_dilated(x,w,(1,),[((K-1)*D,0)],rhs_dilation=(D,),dimension_numbers=('NWC','WIO','NWC'))
fs={n:jax.jit(f) for n,f in dict(full=full,ring_span=ring_span,shift=shift,shift_gather=shift_gather).items()}
ref=np.asarray(fs['full'](w,xs))
for n,f in fs.items():
    y=np.asarray(f(w,xs)); 
    if n!='full': print(n, np.abs(np.moveaxis(y,0,1)-ref).max())
ts={n:[] for n in fs}
for r in range(9):
    for n,f in fs.items():
        t=time.perf_counter(); f(w,xs).block_until_ready(); ts[n].append(time.perf_counter()-t)
for n in fs: print(n, round(1e3*statistics.median(ts[n]),1), round(statistics.median(a/b for a,b in zip(ts[n],ts['full'])),2))
