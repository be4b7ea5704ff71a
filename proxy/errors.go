package proxy

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// clientError is an error the client receives as an ErrorResponse before its
// connection is closed. It is the one place where internal errors become
// client errors: the message says what happened without leaking internals
// (the cause is logged, never sent).
type clientError struct {
	code    string // SQLSTATE
	message string
	hint    string
	result  string // pgmoat_client_connections_total result label
	cause   error
}

// upstreamLoginError is the client's error when pgmoat's login upstream
// fails. The server's SQLSTATE is passed on when the client can act on it: a
// startup parameter it sent was refused (a bad TimeZone: 22023; an unknown
// parameter or lc_messages without the privilege: 42704, 42501), with the
// server's message, which is about that parameter; the server is out of
// connections (53300) or starting or stopping (57P03), with a message of
// pgmoat's (the server's names the upstream role). Anything else, such as
// pgmoat's own credentials being refused or the server out of memory, is
// the operator's business: the client gets 08006 and the log the cause.
func upstreamLoginError(err error) *clientError {
	ce := &clientError{code: "08006", message: "pgmoat: could not connect to the database server", result: ResultUpstreamError, cause: err}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return ce
	}
	switch {
	case pe.Code == "22023", pe.Code == "42704", pe.Code == "42501":
		ce.code, ce.message, ce.hint = pe.Code, pe.Message, pe.Hint
	case pe.Code == "53300":
		ce.code, ce.message = pe.Code, "pgmoat: the database server has no connection to spare"
	case pe.Code == "57P03":
		ce.code, ce.message = pe.Code, "the database system is not accepting connections"
	}
	return ce
}

func (e *clientError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s (%s): %v", e.message, e.code, e.cause)
	}
	return fmt.Sprintf("%s (%s)", e.message, e.code)
}

func (e *clientError) Unwrap() error { return e.cause }

func protocolViolation(format string, args ...any) *clientError {
	return &clientError{code: "08P01", message: fmt.Sprintf(format, args...), result: ResultProtocolError}
}

// fatal turns any session error into the FATAL ErrorResponse to send.
func fatal(err error) *pgproto3.ErrorResponse {
	var ce *clientError
	if !errors.As(err, &ce) {
		ce = &clientError{code: "08006", message: "pgmoat: connection failure"}
	}
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                ce.code,
		Message:             ce.message,
		Hint:                ce.hint,
	}
}

// resultOf is the connection result label for a session that ended with err.
func resultOf(err error) string {
	var ce *clientError
	var ae *AuthError
	switch {
	case err == nil:
		return ResultOK
	case errors.As(err, &ae):
		return ResultAuthFailed
	case errors.As(err, &ce) && ce.result != "":
		return ce.result
	default:
		return ResultOK
	}
}
