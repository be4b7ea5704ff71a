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
	h := NewHTTPHandler(reg, func() error { return readyErr })

	tests := []struct {
		name, method, path string
		readyErr           error
		code               int
		body               string // a substring of the response body
	}{
		{"metrics", "GET", "/metrics", nil, 200, "pgmoat_client_connections 1"},
		{"healthz", "GET", "/healthz", nil, 200, "ok"},
		{"healthz while not ready", "GET", "/healthz", errors.New("upstream unreachable"), 200, "ok"},
		{"ready", "GET", "/readyz", nil, 200, "ok"},
		{"not ready", "GET", "/readyz", errors.New("upstream unreachable"), 503, "upstream unreachable"},
		{"unknown path", "GET", "/", nil, 404, ""},
		{"wrong method", "POST", "/healthz", nil, 405, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			readyErr = tt.readyErr
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
