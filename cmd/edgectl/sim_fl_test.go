package main

import "testing"

func TestParseByzantine(t *testing.T) {
	k, x, err := parseByzantine("4:scale=-10")
	if err != nil || k != 4 || x != -10 {
		t.Errorf("4:scale=-10: %d %v %v", k, x, err)
	}
	for _, bad := range []string{"", "4", "4:scale", "4:factor=2", "0:scale=2", "-1:scale=2", "x:scale=2", "4:scale=NaN", "4:scale=Inf"} {
		if _, _, err := parseByzantine(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseReference(t *testing.T) {
	m, err := parseReference("datatest=0.979, datatest2=0.992")
	if err != nil || m["datatest"] != 0.979 || m["datatest2"] != 0.992 || len(m) != 2 {
		t.Errorf("%v %v", m, err)
	}
	for _, bad := range []string{"", "test", "test=", "=0.8", "test=1.5", "test=0", "test=x"} {
		if _, err := parseReference(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
