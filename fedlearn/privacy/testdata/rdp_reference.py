"""Reference values for accountant_test.go, computed independently of the Go code.

Run once with Python 3 and mpmath (no numpy needed):  python3 rdp_reference.py

For integer order a, the Renyi divergence of the Poisson-subsampled Gaussian
mechanism (sampling rate q, noise multiplier z) is log(A_a)/(a-1) with
    A_a = E_{x ~ N(0, z^2)} [ ((1-q) + q * exp((2x-1)/(2 z^2)))^a ]
(Mironov, Talwar, Zhang 2019, section 3). This script evaluates A_a two ways,
both in 80-digit arithmetic and neither in log space:
  1. the binomial expansion  sum_i C(a,i) q^i (1-q)^(a-i) exp((i^2-i)/(2 z^2))
     with exact integer binomials;
  2. numerical integration of the expectation above (mpmath.quad), as a check
     of the expansion itself, for small orders.
epsilon = min over a in 2..512 of T*RDP(a) + ln(1/delta)/(a-1).
"""
import mpmath as mp

mp.mp.dps = 80


def log_a_binomial(q, z, a):
    q, z = mp.mpf(q), mp.mpf(z)
    s = mp.mpf(0)
    for i in range(a + 1):
        s += mp.binomial(a, i) * q**i * (1 - q) ** (a - i) * mp.exp(mp.mpf(i * i - i) / (2 * z * z))
    return mp.log(s)


def log_a_integral(q, z, a):
    q, z = mp.mpf(q), mp.mpf(z)
    f = lambda x: mp.npdf(x, 0, z) * ((1 - q) + q * mp.exp((2 * x - 1) / (2 * z * z))) ** a
    return mp.log(mp.quad(f, [-mp.inf, -10 * z, 0, 10 * z, 40 * z, mp.inf]))


def rdp(q, z, a):
    if q == 1:
        return mp.mpf(a) / (2 * mp.mpf(z) ** 2)
    return log_a_binomial(q, z, a) / (a - 1)


def epsilon(q, z, T, delta):
    best = None
    for a in range(2, 513):
        e = T * rdp(q, z, a) + mp.log(1 / mp.mpf(delta)) / (a - 1)
        if best is None or e < best[0]:
            best = (e, a)
    return best


if __name__ == "__main__":
    print("# A_a: binomial expansion vs numerical integration")
    for q, z, a in [(0.01, 1.1, 2), (0.1, 1.0, 8), (0.5, 2.0, 16), (0.3, 0.8, 5)]:
        b, i = log_a_binomial(q, z, a), log_a_integral(q, z, a)
        print(f"q={q} z={z} a={a}: rdp={mp.nstr(b / (a - 1), 20)} integral={mp.nstr(i / (a - 1), 20)} diff={mp.nstr(b - i, 3)}")
    print("# RDP(a) of one round")
    for q, z, a in [(0.01, 1.1, 32), (0.1, 1.0, 8), (0.5, 2.0, 256), (0.02, 0.7, 512)]:
        print(f"q={q} z={z} a={a}: {mp.nstr(rdp(q, z, a), 20)}")
    print("# epsilon")
    for q, z, T, d in [(1, 5, 50, 1e-5), (0.01, 1.1, 10000, 1e-5), (0.1, 1.0, 100, 1e-5), (10 / 36, 1.0, 50, 1e-5), (0.5, 2.0, 200, 1e-6)]:
        e, a = epsilon(q, z, T, d)
        print(f"q={q} z={z} T={T} delta={d}: eps={mp.nstr(e, 20)} order={a}")
