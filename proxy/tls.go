package proxy

import (
	"crypto/tls"
	"fmt"

	"github.com/pgmoat/pgmoat/config"
)

// LoadTLS returns the server TLS configuration for clients, or nil if none
// is configured.
func LoadTLS(c config.TLS) (*tls.Config, error) {
	if c.CertFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
