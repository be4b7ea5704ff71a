package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

const (
	cancelRequestCode = 80877102
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
)

// errIncompleteStartup is the cause of a session whose client closed the
// connection, or let limits.auth_timeout pass, before it sent a whole startup
// packet. PostgreSQL closes such a connection without a word (a client that
// never finished speaking is not expected to read a reply), logging at most
// "incomplete startup packet"; pgmoat too closes it without writing, logs it
// at debug level and counts it as a protocol error. A client that sends no
// byte at all and closes (a port probe, or a client that asked for TLS and
// got 'N') is not one of them: its session ends cleanly.
var errIncompleteStartup = errors.New("incomplete startup packet")

func incompleteStartup(err error) *clientError {
	// Never sent: the code is what PostgreSQL logs.
	return &clientError{code: "08P01", message: "closed without a reply", result: ResultProtocolError,
		cause: fmt.Errorf("%w: %w", errIncompleteStartup, err)}
}

// startup is a client's StartupMessage, checked.
type startup struct {
	major, minor int
	user         string
	database     string
	params       map[string]string // to send upstream
	unrecognized []string          // _pq_ protocol options, for NegotiateProtocolVersion
}

// forwardedParams are the startup parameters passed upstream, by lowercase
// name. Any GUC can arrive as a startup parameter, so everything else is
// refused: the tenant setting, search_path, role, row_security,
// standard_conforming_strings, ... must never reach the server this way.
var forwardedParams = map[string]bool{
	"application_name":                    true,
	"client_encoding":                     true,
	"datestyle":                           true,
	"timezone":                            true,
	"extra_float_digits":                  true,
	"intervalstyle":                       true,
	"statement_timeout":                   true,
	"lock_timeout":                        true,
	"idle_in_transaction_session_timeout": true,
	"default_transaction_isolation":       true,
	"default_transaction_read_only":       true,
	"default_transaction_deferrable":      true,
	"client_min_messages":                 true,
	"bytea_output":                        true,
	"lc_messages":                         true,
	"lc_monetary":                         true,
	"lc_numeric":                          true,
	"lc_time":                             true,
}

// parseStartup decodes a StartupMessage body (after the length word).
func parseStartup(body []byte) (*startup, error) {
	if len(body) < 4 {
		return nil, protocolViolation("invalid startup packet layout")
	}
	v := binary.BigEndian.Uint32(body)
	st := &startup{major: int(v >> 16), minor: int(v & 0xffff), params: map[string]string{}}
	if st.major != 3 {
		return nil, protocolViolation("unsupported frontend protocol %d.%d: server supports 3.0", st.major, st.minor)
	}
	rest := body[4:]
	for {
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return nil, protocolViolation("invalid startup packet layout: expected terminator as last byte")
		}
		if i == 0 {
			if len(rest) != 1 {
				return nil, protocolViolation("invalid startup packet layout: expected terminator as last byte")
			}
			break
		}
		key := string(rest[:i])
		rest = rest[i+1:]
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			return nil, protocolViolation("invalid startup packet layout: expected terminator as last byte")
		}
		val := string(rest[:j])
		rest = rest[j+1:]
		if err := st.set(key, val); err != nil {
			return nil, err
		}
	}
	if st.user == "" {
		return nil, &clientError{code: "28000", message: "no PostgreSQL user name specified in startup packet", result: ResultProtocolError}
	}
	return st, nil
}

func (st *startup) set(key, val string) error {
	lk := strings.ToLower(key)
	switch {
	case key == "user":
		st.user = val
	case key == "database":
		st.database = val
	case strings.HasPrefix(key, "_pq_."):
		st.unrecognized = append(st.unrecognized, key)
	case key == "replication":
		if val != "false" && val != "off" && val != "0" && val != "no" {
			return refusedParam("replication connections are not allowed through pgmoat")
		}
	case key == "options":
		if strings.TrimSpace(val) != "" {
			return refusedParam("the startup parameter \"options\" is not allowed: pgmoat decides the session's settings")
		}
	case lk == "client_encoding":
		if !isUTF8(val) {
			return refusedParam(fmt.Sprintf("client_encoding %q is not supported: pgmoat parses SQL as UTF8", val))
		}
		st.params[key] = val
	case forwardedParams[lk]:
		st.params[key] = val
	default:
		return refusedParam(fmt.Sprintf("the startup parameter %q is not allowed through pgmoat", key))
	}
	return nil
}

func refusedParam(msg string) *clientError {
	return &clientError{code: "42501", message: "pgmoat: " + msg, result: ResultRefused}
}

func isUTF8(enc string) bool {
	switch strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(strings.TrimSpace(enc))) {
	case "utf8", "unicode":
		return true
	}
	return false
}
