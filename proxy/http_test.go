package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHTTPHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, 10)
	m.ClientConnected()
	var readyErr error
	ready := func() error { return readyErr }
	plain := NewHTTPHandler(reg, ready)
	profiled := NewHTTPHandler(reg, ready, HTTPOptions{Pprof: true})

	tests := []struct {
		name, method, path string
		pprof              bool
		readyErr           error
		code               int
		body               string // a substring of the response body
	}{
		{"metrics", "GET", "/metrics", false, nil, 200, `pgmoat_client_connections{state="authenticating"} 1`},
		{"healthz", "GET", "/healthz", false, nil, 200, "ok"},
		{"healthz while not ready", "GET", "/healthz", false, errors.New("upstream unreachable"), 200, "ok"},
		{"ready", "GET", "/readyz", false, nil, 200, "ok"},
		{"not ready", "GET", "/readyz", false, errors.New("upstream: connection refused"), 503, "upstream: connection refused"},
		{"not ready, two reasons", "GET", "/readyz", false,
			errors.Join(errors.New("catalog: not loaded"), errors.New("upstream: connection refused")),
			503, "catalog: not loaded\nupstream: connection refused\n"},
		{"unknown path", "GET", "/", false, nil, 404, ""},
		{"wrong method", "POST", "/healthz", false, nil, 405, ""},
		{"pprof off", "GET", "/debug/pprof/", false, nil, 404, ""},
		{"pprof off, a profile", "GET", "/debug/pprof/cmdline", false, nil, 404, ""},
		{"pprof index", "GET", "/debug/pprof/", true, nil, 200, "goroutine"},
		{"pprof goroutines", "GET", "/debug/pprof/goroutine?debug=1", true, nil, 200, "goroutine profile"},
		{"pprof cmdline", "GET", "/debug/pprof/cmdline", true, nil, 200, ""},
		{"pprof keeps the rest", "GET", "/readyz", true, nil, 200, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			readyErr = tt.readyErr
			h := plain
			if tt.pprof {
				h = profiled
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			res := rec.Result()
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != tt.code {
				t.Errorf("status %d, want %d", res.StatusCode, tt.code)
			}
			if !strings.Contains(string(body), tt.body) {
				t.Errorf("body %q does not contain %q", body, tt.body)
			}
		})
	}
}

// The handler works over a real HTTP server, as Prometheus scrapes it.
func TestHTTPScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg, 10).SetBuildInfo("v9.9.9")
	srv := httptest.NewServer(NewHTTPHandler(reg, func() error { return nil }))
	defer srv.Close()
	res, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || !strings.Contains(string(body), `version="v9.9.9"`) {
		t.Errorf("status %d, body lacks build info:\n%s", res.StatusCode, body)
	}
}
