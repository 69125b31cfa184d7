package greensched

import "math"

// mat2 is a symmetric-or-not 2×2 matrix {a, b; c, d}.
type mat2 struct{ a, b, c, d float64 }

func (m mat2) mul(n mat2) mat2 {
	return mat2{m.a*n.a + m.b*n.c, m.a*n.b + m.b*n.d, m.c*n.a + m.d*n.c, m.c*n.b + m.d*n.d}
}
func (m mat2) add(n mat2) mat2 { return mat2{m.a + n.a, m.b + n.b, m.c + n.c, m.d + n.d} }
func (m mat2) sub(n mat2) mat2 { return mat2{m.a - n.a, m.b - n.b, m.c - n.c, m.d - n.d} }
func (m mat2) t() mat2         { return mat2{m.a, m.c, m.b, m.d} }
func (m mat2) inv() (mat2, bool) {
	det := m.a*m.d - m.b*m.c
	if det == 0 || math.IsNaN(det) || math.IsInf(det, 0) {
		return mat2{}, false
	}
	return mat2{m.d / det, -m.b / det, -m.c / det, m.a / det}, true
}

// smoothTrend is a local-linear-trend Kalman filter and RTS smoother on a
// regular grid: level' = level + slope + N(0, qx), slope' = slope + N(0,
// qv), y[k] = level + noise of variance r[k] (NaN: missing, 0: exact). The
// trend model keeps the curvature of a smooth signal that a random walk
// flattens (a trough stays a trough). It returns the smoothed levels.
func smoothTrend(y, r []float64, qx, qv float64) []float64 {
	n := len(y)
	type st struct{ x, v float64 }
	xf, xp := make([]st, n), make([]st, n)
	pf, pp := make([]mat2, n), make([]mat2, n)
	// diffuse start: a wide prior centred on the first observation
	first := math.NaN()
	for _, v := range y {
		if !math.IsNaN(v) {
			first = v
			break
		}
	}
	out := make([]float64, n)
	if math.IsNaN(first) {
		for k := range out {
			out[k] = math.NaN()
		}
		return out
	}
	big := 1e4 * (first*first + 1)
	x := st{first, 0}
	p := mat2{big, 0, 0, big}
	F := mat2{1, 1, 0, 1}
	Q := mat2{qx, 0, 0, qv}
	for k := range n {
		if k > 0 {
			x = st{x.x + x.v, x.v}
			p = F.mul(p).mul(F.t()).add(Q)
		}
		xp[k], pp[k] = x, p
		if !math.IsNaN(y[k]) {
			s := p.a + r[k]
			if s > 0 {
				ka, kc := p.a/s, p.c/s
				e := y[k] - x.x
				x = st{x.x + ka*e, x.v + kc*e}
				// P = (I − K H) P
				p = mat2{p.a - ka*p.a, p.b - ka*p.b, p.c - kc*p.a, p.d - kc*p.b}
			}
		}
		xf[k], pf[k] = x, p
	}
	xs := xf[n-1]
	out[n-1] = xs.x
	for k := n - 2; k >= 0; k-- {
		inv, ok := pp[k+1].inv()
		if !ok {
			xs = xf[k]
			out[k] = xs.x
			continue
		}
		g := pf[k].mul(F.t()).mul(inv)
		dx, dv := xs.x-xp[k+1].x, xs.v-xp[k+1].v
		xs = st{xf[k].x + g.a*dx + g.b*dv, xf[k].v + g.c*dx + g.d*dv}
		out[k] = xs.x
	}
	return out
}
