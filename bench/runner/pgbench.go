package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// runGrace is how long a pgbench run may take beyond its -T duration
// (connecting 64 clients, finishing the last transactions).
const runGrace = 60 * time.Second

// run is one pgbench invocation against one target.
type run struct {
	target  *target
	script  string // file name under scripts/
	mode    string // -M: simple, extended or prepared
	clients int
	seconds int
	connect bool   // -C: a new connection per transaction (connection storm)
	logTo   string // if set, log every transaction's latency under this prefix (-l)
}

// result is what one pgbench run measured.
type result struct {
	tps       float64 // pgbench's tps (without initial connection time, except with -C)
	latencyMs float64 // pgbench's latency average
	tx        int64   // transactions processed
	// cpuPerTx is the middle layer's CPU time per transaction (0 for a
	// direct target). steady says it was measured between the first and
	// last progress reports, after every client had connected; otherwise it
	// covers the whole run, connection setup included.
	cpuPerTx time.Duration
	steady   bool
	// latencies of the single transactions in µs, when run.logTo is set;
	// p50 and p99 are their percentiles.
	latencies []float64
	p50, p99  float64
}

// pgbench runs r and parses its report. The middle layer's CPU time is read
// from /proc whenever pgbench prints a progress line (-P 1), so that the
// connection phase, which costs a SCRAM exchange per client in some targets
// and none in others, stays out of the steady-state figure.
func (b *bencher) pgbench(ctx context.Context, r run) (result, error) {
	args := []string{"-n", "-M", r.mode, "-c", strconv.Itoa(r.clients), "-j", strconv.Itoa(min(r.clients, b.threads)),
		"-T", strconv.Itoa(r.seconds), "-P", "1", "-D", "scale=" + strconv.Itoa(b.scale),
		"-f", filepath.Join(b.scriptDir, r.script)}
	if r.connect {
		args = append(args, "-C")
	}
	if r.logTo != "" {
		args = append(args, "-l", "--log-prefix", r.logTo)
	}
	args = append(args, dbName)
	// A run that outlives its duration by runGrace has a client waiting for
	// a reply that will not come: kill it rather than wait forever.
	rctx, cancel := context.WithTimeout(ctx, time.Duration(r.seconds)*time.Second+runGrace)
	defer cancel()
	cmd := exec.CommandContext(rctx, b.pgbenchBin, args...)
	cmd.Env = append(os.Environ(), r.target.libpqEnv()...)
	cmd.Dir = b.dir
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return result{}, err
	}

	pid := r.target.pid()
	cpu := func() time.Duration {
		if pid == 0 {
			return 0
		}
		d, err := cpuTime(pid)
		if err != nil {
			return -1
		}
		return d
	}
	cpuStart := cpu()
	if err := cmd.Start(); err != nil {
		return result{}, fmt.Errorf("pgbench: %w", err)
	}
	var (
		samples []progressSample
		errText strings.Builder
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if p, ok := parseProgress(line); ok {
				p.cpu = cpu()
				samples = append(samples, p)
				continue
			}
			if errText.Len() < 4096 {
				errText.WriteString(line)
				errText.WriteByte('\n')
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	wg.Wait()
	waitErr := cmd.Wait()
	cpuEnd := cpu()

	desc := fmt.Sprintf("pgbench -M %s -c %d -T %d -f %s against %s", r.mode, r.clients, r.seconds, r.script, r.target.name)
	if r.connect {
		desc += " (-C)"
	}
	if waitErr != nil {
		if rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			waitErr = fmt.Errorf("still running %v after its %d s: killed (a client never got a reply)", runGrace, r.seconds)
		}
		return result{}, fmt.Errorf("%s: %v\n%s%s", desc, waitErr, stdout.String(), errText.String())
	}
	rep, err := parseReport(stdout.String())
	if err != nil {
		return result{}, fmt.Errorf("%s: %v\n%s%s", desc, err, stdout.String(), errText.String())
	}
	if rep.failed > 0 {
		return result{}, fmt.Errorf("%s: %d failed transactions\n%s", desc, rep.failed, errText.String())
	}
	res := result{tps: rep.tps, latencyMs: rep.latencyMs, tx: rep.tx}
	if pid != 0 && cpuStart >= 0 && cpuEnd >= 0 {
		if d, ok := steadyCPUPerTx(samples); ok && !r.connect {
			res.cpuPerTx, res.steady = d, true
		} else if rep.tx > 0 {
			res.cpuPerTx = (cpuEnd - cpuStart) / time.Duration(rep.tx)
		}
	}
	if r.logTo != "" {
		res.latencies, err = readLatencyLogs(r.logTo)
		if err != nil {
			return result{}, fmt.Errorf("%s: %w", desc, err)
		}
	}
	return res, nil
}

// pgbenchReport is the part of pgbench's final report the runner uses.
type pgbenchReport struct {
	tx, failed int64
	latencyMs  float64
	tps        float64
}

var (
	reTx      = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed  = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reProg    = regexp.MustCompile(`^progress: ([0-9.]+) s, ([0-9.]+) tps`)
)

// parseReport reads pgbench's (PostgreSQL 15) final report from its stdout.
func parseReport(out string) (pgbenchReport, error) {
	var r pgbenchReport
	m := reTx.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no 'number of transactions actually processed' in pgbench's output")
	}
	r.tx, _ = strconv.ParseInt(m[1], 10, 64)
	if r.tx == 0 {
		return r, fmt.Errorf("pgbench processed no transactions")
	}
	if m := reFailed.FindStringSubmatch(out); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reLatency.FindStringSubmatch(out); m != nil {
		r.latencyMs, _ = strconv.ParseFloat(m[1], 64)
	}
	m = reTPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no 'tps =' in pgbench's output")
	}
	r.tps, _ = strconv.ParseFloat(m[1], 64)
	return r, nil
}

// progressSample is one pgbench progress line (-P) and the middle layer's
// CPU time read when it arrived.
type progressSample struct {
	at  float64 // seconds since the benchmark started, as pgbench reports it
	tps float64 // over the interval ending at at
	cpu time.Duration
}

func parseProgress(line string) (progressSample, bool) {
	m := reProg.FindStringSubmatch(line)
	if m == nil {
		return progressSample{}, false
	}
	at, err1 := strconv.ParseFloat(m[1], 64)
	tps, err2 := strconv.ParseFloat(m[2], 64)
	return progressSample{at: at, tps: tps}, err1 == nil && err2 == nil
}

// steadyCPUPerTx is the CPU time per transaction between the first and the
// last progress sample: the transactions in that window are the sum of each
// later interval's tps times its length. It needs two samples and a valid
// CPU reading in both.
func steadyCPUPerTx(s []progressSample) (time.Duration, bool) {
	if len(s) < 2 || s[0].cpu < 0 || s[len(s)-1].cpu < 0 {
		return 0, false
	}
	var tx float64
	for i := 1; i < len(s); i++ {
		tx += s[i].tps * (s[i].at - s[i-1].at)
	}
	if tx < 1 {
		return 0, false
	}
	cpu := s[len(s)-1].cpu - s[0].cpu
	return time.Duration(float64(cpu) / tx), true
}

// readLatencyLogs reads the per-transaction logs pgbench -l wrote under
// prefix (prefix.<pid>, and prefix.<pid>.<thread> for further threads) and
// returns every transaction's latency in µs (the third field of a line).
func readLatencyLogs(prefix string) ([]float64, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no pgbench log files %s.*", prefix)
	}
	var lat []float64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		l, err := parseLatencyLog(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		lat = append(lat, l...)
		os.Remove(f)
	}
	return lat, nil
}

// parseLatencyLog parses pgbench's per-transaction log lines,
// "client_id transaction_no time script_no time_epoch time_us", where time
// is the transaction's latency in µs.
func parseLatencyLog(b []byte) ([]float64, error) {
	var lat []float64
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 6 {
			return nil, fmt.Errorf("line %d: %d fields, want at least 6", i+1, len(f))
		}
		v, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		lat = append(lat, v)
	}
	return lat, nil
}
