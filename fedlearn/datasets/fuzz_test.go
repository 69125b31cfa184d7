package datasets

import (
	"math"
	"strings"
	"testing"
)

// checkTable fails the test when a table a reader accepted breaks the
// reader's promises.
func checkTable(t *testing.T, tab Table, withUsers bool) {
	t.Helper()
	if tab.Len() == 0 || len(tab.X) != tab.Len() || len(tab.Classes) < 2 || len(tab.Features) == 0 {
		t.Fatalf("accepted table: %d rows, %d labels, %d classes, %d features", len(tab.X), len(tab.Y), len(tab.Classes), len(tab.Features))
	}
	if withUsers != (tab.User != nil) || (withUsers && len(tab.User) != tab.Len()) {
		t.Fatalf("accepted table: %d users for %d rows", len(tab.User), tab.Len())
	}
	for i, x := range tab.X {
		if len(x) != len(tab.Features) {
			t.Fatalf("row %d has %d values, %d features", i, len(x), len(tab.Features))
		}
		for _, v := range x {
			if math.IsInf(v, 0) {
				t.Fatalf("row %d holds %v", i, v)
			}
		}
		if y := tab.Y[i]; y < 0 || y >= len(tab.Classes) {
			t.Fatalf("row %d label %d of %d classes", i, y, len(tab.Classes))
		}
	}
}

func FuzzReadWISDM(f *testing.F) {
	f.Add(smallARFF)
	f.Add(strings.Replace(smallARFF, "{Walk,'Sit down',Run}", "", 1))
	f.Add("@relation r\n@attribute id numeric\n@attribute user\n@attribute x numeric\n@attribute class\n@data\n1,2,?,A\n2,3,4.5,B\n")
	f.Add("@attribute user\n@attribute x numeric\n@attribute class {A,B}\n@data\n{0 1}\n")
	f.Add("@attribute user\n@attribute x numeric\n@attribute class {A,B}\n@data\n1,'2\\'',A\n")
	f.Fuzz(func(t *testing.T, in string) {
		tab, err := ReadWISDM(strings.NewReader(in), "fuzz.arff")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "datasets: fuzz.arff") {
				t.Fatalf("error without the file's name: %v", err)
			}
			return
		}
		checkTable(t, tab, true)
		if _, _, err := SplitByUser(tab, 1); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzReadOccupancy(f *testing.F) {
	f.Add(smallOccupancy)
	f.Add("\"date\",\"occupancy\",\"Temperature\",\"Humidity\",\"Light\",\"CO2\",\"HumidityRatio\"\n" +
		"\"1\",\"2015-02-04 17:51:00\",1,23.18,27.272,426,721.25,0.0047929\n")
	f.Add("Date,Temperature,Humidity,Light,CO2,HumidityRatio,Occupancy\n2015-02-02 14:19:00,1,2,3,4,5,0\n\"x\n")
	f.Fuzz(func(t *testing.T, in string) {
		tab, err := ReadOccupancy(strings.NewReader(in), "fuzz.txt")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "datasets: fuzz.txt") {
				t.Fatalf("error without the file's name: %v", err)
			}
			return
		}
		checkTable(t, tab, false)
	})
}
