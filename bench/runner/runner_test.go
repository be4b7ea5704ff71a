package main

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/pgmoat/pgmoat/bench"
)

// A PostgreSQL 15 pgbench report, as the runner invokes it.
const pgbenchOutput = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: /tmp/x/files/scripts/select_plain.sql
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 23293
number of failed transactions: 0 (0.000%)
latency average = 0.599 ms
latency stddev = 1.482 ms
initial connection time = 186.248 ms
tps = 12784.148600 (without initial connection time)
`

func TestParseReport(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    pgbenchReport
		wantErr bool
	}{
		{name: "complete", out: pgbenchOutput, want: pgbenchReport{tx: 23293, latencyMs: 0.599, tps: 12784.1486}},
		{name: "connection storm", out: "number of transactions actually processed: 48\nnumber of failed transactions: 2 (4.000%)\n" +
			"latency average = 354.238 ms\ntps = 22.583655 (including reconnection times)\n",
			want: pgbenchReport{tx: 48, failed: 2, latencyMs: 354.238, tps: 22.583655}},
		{name: "no tps", out: "number of transactions actually processed: 10\n", wantErr: true},
		{name: "no transactions", out: "number of transactions actually processed: 0\ntps = 0.000000\n", wantErr: true},
		{name: "aborted", out: "pgbench: error: connection to server failed\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseReport(tt.out)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseReport: error %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && got != tt.want {
				t.Errorf("parseReport = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseProgress(t *testing.T) {
	tests := []struct {
		line   string
		want   progressSample
		wantOK bool
	}{
		{"progress: 1.0 s, 8236.9 tps, lat 0.760 ms stddev 1.115, 0 failed", progressSample{at: 1, tps: 8236.9}, true},
		{"progress: 12.0 s, 0.0 tps, lat 0.000 ms stddev 0.000, 0 failed", progressSample{at: 12}, true},
		{"pgbench (15.18 (Debian 15.18-0+deb12u1))", progressSample{}, false},
		{"client 0 aborted in command 1 (SQL) of script 0", progressSample{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, ok := parseProgress(tt.line)
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("parseProgress = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestSteadyCPUPerTx(t *testing.T) {
	tests := []struct {
		name    string
		samples []progressSample
		want    time.Duration
		wantOK  bool
	}{
		{name: "one interval", samples: []progressSample{
			{at: 1, tps: 5000, cpu: 1 * time.Second},
			{at: 2, tps: 10000, cpu: 2 * time.Second},
		}, want: 100 * time.Microsecond, wantOK: true},
		{name: "the first interval is left out", samples: []progressSample{
			{at: 1, tps: 1, cpu: 0},
			{at: 2, tps: 4000, cpu: 400 * time.Millisecond},
			{at: 3, tps: 6000, cpu: 1400 * time.Millisecond},
		}, want: 140 * time.Microsecond, wantOK: true},
		{name: "one sample", samples: []progressSample{{at: 1, tps: 5000, cpu: time.Second}}},
		{name: "unreadable cpu", samples: []progressSample{{at: 1, tps: 5000, cpu: -1}, {at: 2, tps: 5000, cpu: time.Second}}},
		{name: "no transactions", samples: []progressSample{{at: 1, cpu: 0}, {at: 2, cpu: time.Second}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := steadyCPUPerTx(tt.samples)
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("steadyCPUPerTx = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestParseLatencyLog(t *testing.T) {
	log := "0 0 412 0 1795432101 123456\n0 1 87 0 1795432101 123600\n\n0 2 95 0 1795432101 123700 12\n"
	got, err := parseLatencyLog([]byte(log))
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{412, 87, 95}; !slices.Equal(got, want) {
		t.Errorf("parseLatencyLog = %v, want %v", got, want)
	}
	if _, err := parseLatencyLog([]byte("0 0 412\n")); err == nil {
		t.Error("parseLatencyLog accepted a line with 3 fields")
	}
}

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    time.Duration
		wantErr bool
	}{
		{name: "plain", stat: "1234 (pgmoat) S 1 1234 1234 0 -1 4194560 5000 0 0 0 250 75 0 0 20 0 9 0 100 0 0",
			want: 3250 * time.Millisecond},
		{name: "spaces and parentheses in the name", stat: "99 (a (b) c) R 1 99 99 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0",
			want: 100 * time.Millisecond},
		{name: "truncated", stat: "1 (x) S 1 1", wantErr: true},
		{name: "no name", stat: "garbage", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseStatCPU = %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseVmRSS(t *testing.T) {
	got, err := parseVmRSS([]byte("Name:\tpgmoat\nVmPeak:\t  9000 kB\nVmRSS:\t   21632 kB\nThreads:\t9\n"))
	if err != nil || got != 21632<<10 {
		t.Errorf("parseVmRSS = %d, %v; want %d", got, err, 21632<<10)
	}
	if _, err := parseVmRSS([]byte("Name:\tx\n")); err == nil {
		t.Error("parseVmRSS accepted a status without VmRSS")
	}
}

func TestStats(t *testing.T) {
	tests := []struct {
		name                     string
		xs                       []float64
		median, spread, p50, p99 float64
	}{
		{name: "odd", xs: []float64{10, 30, 20}, median: 20, spread: 0.5, p50: 20, p99: 30},
		{name: "even", xs: []float64{4, 1, 3, 2}, median: 2.5, spread: 0.6, p50: 2, p99: 4},
		{name: "one", xs: []float64{7}, median: 7, spread: 0, p50: 7, p99: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := slices.Clone(tt.xs)
			if got := median(tt.xs); got != tt.median {
				t.Errorf("median = %v, want %v", got, tt.median)
			}
			if got := spread(tt.xs); math.Abs(got-tt.spread) > 1e-9 {
				t.Errorf("spread = %v, want %v", got, tt.spread)
			}
			if got := percentile(tt.xs, 50); got != tt.p50 {
				t.Errorf("percentile 50 = %v, want %v", got, tt.p50)
			}
			if got := percentile(tt.xs, 99); got != tt.p99 {
				t.Errorf("percentile 99 = %v, want %v", got, tt.p99)
			}
			if !slices.Equal(tt.xs, orig) {
				t.Errorf("input modified: %v, was %v", tt.xs, orig)
			}
		})
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(percentile(nil, 50)) {
		t.Error("median or percentile of nothing is not NaN")
	}
}

func TestRotate(t *testing.T) {
	xs := []string{"A", "R", "B", "C"}
	tests := []struct {
		k    int
		want []string
	}{
		{0, []string{"A", "R", "B", "C"}},
		{1, []string{"R", "B", "C", "A"}},
		{5, []string{"R", "B", "C", "A"}},
	}
	for _, tt := range tests {
		if got := rotate(xs, tt.k); !slices.Equal(got, tt.want) {
			t.Errorf("rotate(%v, %d) = %v, want %v", xs, tt.k, got, tt.want)
		}
	}
}

func TestScript(t *testing.T) {
	tests := []struct {
		style, workload, mode, want string
	}{
		{stylePlain, "select", "extended", "select_plain.sql"},
		{styleInline, "select", "simple", "select_a_simple.sql"},
		{styleInline, "tpcb", "prepared", "tpcb_a_pipeline.sql"},
		{styleBPrime, "txn", "extended", "txn_bprime.sql"},
		{styleBPrime, "select1", "simple", "select1.sql"},
	}
	for _, tt := range tests {
		t.Run(tt.style+"/"+tt.workload+"/"+tt.mode, func(t *testing.T) {
			tg := &target{style: tt.style}
			if got := tg.script(tt.workload, tt.mode); got != tt.want {
				t.Errorf("script = %q, want %q", got, tt.want)
			}
		})
	}
}

// Every script a target can pick is embedded.
func TestScriptsEmbedded(t *testing.T) {
	for _, style := range []string{stylePlain, styleInline, styleBPrime} {
		for _, w := range []string{"select", "tpcb", "select1", "txn"} {
			for _, m := range []string{"simple", "extended", "prepared"} {
				name := (&target{style: style}).script(w, m)
				if _, err := bench.Files.ReadFile("scripts/" + name); err != nil {
					t.Errorf("style %s, workload %s, -M %s: %v", style, w, m, err)
				}
			}
		}
	}
}
