package ingest

import (
	"math"
	"math/rand/v2"
	"time"
)

// SyntheticRoom generates, minute by minute, readings that look like an
// office room's in the occupancy data set (see OccupancyRow): people come
// in on working days and leave in the evening, a lamp is on while they are
// in, CO2 builds up while the room is occupied and is ventilated away
// after, the temperature follows the day and the occupants, and the
// humidity ratio follows from temperature and relative humidity. It stands
// in for the data set where that is absent.
//
// It is pure: the same seed and start give the same rows, and the time of
// each row is start plus a minute per row (nothing reads a clock). Seeds
// vary the room itself (its temperature, humidity, lamp, size and
// ventilation), not only the noise.
type SyntheticRoom struct {
	rng *rand.Rand
	t   time.Time // time of the next row

	// The room, drawn once from the seed.
	baseTemp    float64 // °C, the unoccupied daily mean
	dayAmp      float64 // °C, half the daily swing
	baseHum     float64 // %RH, the daily mean
	lamp        float64 // lux under the ceiling lamp
	daylight    float64 // lux at noon through the window, lamp off
	people      float64 // occupants when occupied
	co2PerMin   float64 // ppm per occupant-minute (room size)
	ventilation float64 // share of the excess CO2 removed per minute
	outdoorCO2  float64 // ppm

	// State carried from minute to minute.
	day        int     // day (since the Unix epoch) the schedule was drawn for
	arrive     float64 // hour of the day people arrive; arrive >= leave: nobody comes
	leave      float64
	lunchOut   float64 // hour they go for lunch (for an hour); 0: they stay
	co2        float64
	warmth     float64 // °C the occupants have added
	humDrift   float64 // %RH, a slow random walk
	lightNoise float64
}

// NewSyntheticRoom returns a room whose first row is at start (truncated to
// the minute).
func NewSyntheticRoom(seed uint64, start time.Time) *SyntheticRoom {
	r := &SyntheticRoom{rng: rand.New(rand.NewPCG(seed, 0x0cc0_5e75)), t: start.UTC().Truncate(time.Minute), day: -1}
	u := func(lo, hi float64) float64 { return lo + (hi-lo)*r.rng.Float64() }
	r.baseTemp = u(20, 22.5)
	r.dayAmp = u(0.3, 0.9)
	r.baseHum = u(20, 32)
	r.lamp = u(380, 560)
	r.daylight = u(0, 120)
	r.people = float64(1 + r.rng.IntN(3))
	r.co2PerMin = u(2.5, 4.5)
	r.ventilation = u(0.008, 0.014)
	r.outdoorCO2 = u(410, 460)
	r.co2 = r.outdoorCO2 + u(0, 40)
	return r
}

// Next returns the room's next row, a minute after the previous one.
func (r *SyntheticRoom) Next() OccupancyRow {
	t := r.t
	r.t = r.t.Add(time.Minute)
	day := int(t.Unix() / 86400)
	if day != r.day {
		r.day = day
		r.schedule(t.Weekday())
	}
	hour := float64(t.Hour()) + float64(t.Minute())/60
	occupied := hour >= r.arrive && hour < r.leave && !(r.lunchOut > 0 && hour >= r.lunchOut && hour < r.lunchOut+1)

	// CO2: the occupants breathe it in, ventilation takes the excess out.
	if occupied {
		r.co2 += r.people * r.co2PerMin
	}
	r.co2 -= (r.co2 - r.outdoorCO2) * r.ventilation
	co2 := r.co2 + r.rng.NormFloat64()*3

	// Temperature: a daily cycle peaking mid-afternoon, plus the warmth of
	// the occupants, which comes and goes over about an hour.
	target := 0.0
	if occupied {
		target = 0.35 * r.people
	}
	r.warmth += (target - r.warmth) / 60
	temp := r.baseTemp + r.dayAmp*math.Sin(2*math.Pi*(hour-9)/24) + r.warmth + r.rng.NormFloat64()*0.03

	// Relative humidity: drifts slowly, falls as the air warms, rises a
	// little with the occupants.
	r.humDrift += r.rng.NormFloat64() * 0.05
	r.humDrift *= 0.995
	hum := r.baseHum + r.humDrift - 1.5*(temp-r.baseTemp) + 1.2*r.warmth + r.rng.NormFloat64()*0.05
	hum = min(max(hum, 10), 70)

	// Light: the lamp while occupied, else what daylight comes in.
	r.lightNoise = 0.9*r.lightNoise + r.rng.NormFloat64()*2
	light := 0.0
	if occupied {
		light = r.lamp + r.lightNoise
	} else if hour > 7 && hour < 18 {
		light = r.daylight * math.Sin(math.Pi*(hour-7)/11)
	}
	light = max(light, 0)

	return OccupancyRow{
		Time:          t,
		Temperature:   round2(temp),
		Humidity:      round2(hum),
		Light:         round2(light),
		CO2:           round2(co2),
		HumidityRatio: humidityRatio(temp, hum),
		Occupied:      occupied,
	}
}

// schedule draws who comes in on a day: on working days people arrive
// between 7:30 and 9:30 and leave between 16:30 and 19:00, half the time
// going out for lunch; at weekends someone comes in one day in seven.
func (r *SyntheticRoom) schedule(wd time.Weekday) {
	u := func(lo, hi float64) float64 { return lo + (hi-lo)*r.rng.Float64() }
	r.arrive, r.leave, r.lunchOut = 0, 0, 0
	weekend := wd == time.Saturday || wd == time.Sunday
	if weekend && r.rng.Float64() > 1.0/7 {
		return
	}
	r.arrive, r.leave = u(7.5, 9.5), u(16.5, 19)
	if weekend {
		r.arrive, r.leave = u(10, 12), u(13, 16)
	}
	if r.rng.Float64() < 0.5 {
		r.lunchOut = u(11.75, 13)
	}
}

// humidityRatio is kg of water per kg of dry air at sea level for a
// temperature (°C) and relative humidity (%), from the Magnus formula for
// the saturation vapour pressure.
func humidityRatio(tempC, rh float64) float64 {
	es := 6.112 * math.Exp(17.62*tempC/(243.12+tempC)) // hPa
	e := rh / 100 * es
	return 0.622 * e / (1013.25 - e)
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }
