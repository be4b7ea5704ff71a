package proxy

import (
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HTTPOptions are the optional endpoints of NewHTTPHandler.
type HTTPOptions struct {
	// Pprof serves Go's profiler (net/http/pprof) under /debug/pprof/
	// (config metrics.pprof). Profiles reveal memory contents such as
	// query texts: keep metrics_listen private when it is on.
	Pprof bool
}

// NewHTTPHandler serves the operator endpoints, meant for a listener of
// their own (metrics_listen), not the client port:
//
//	/metrics       Prometheus exposition of g
//	/healthz       200 "ok" while the process serves HTTP at all (liveness)
//	/readyz        200 "ok" if ready() returns nil, else 503 with its error
//	               text (one line per failed check when it joins several)
//	/debug/pprof/  Go's profiler, only with HTTPOptions.Pprof
//
// ready is called on every /readyz request, concurrently: it must be safe for
// concurrent use and should be cheap (report a state kept up to date
// elsewhere rather than dial upstream on each probe). At most one opts
// applies.
func NewHTTPHandler(g prometheus.Gatherer, ready func() error, opts ...HTTPOptions) http.Handler {
	var o HTTPOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			writeText(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeText(w, http.StatusOK, "ok")
	})
	if o.Pprof {
		// The handlers http.DefaultServeMux gets from importing
		// net/http/pprof, registered here instead: DefaultServeMux is
		// never served.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write([]byte(body + "\n"))
}
