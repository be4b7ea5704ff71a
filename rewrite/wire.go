package rewrite

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// errMalformed is returned for a client message whose body does not parse.
var errMalformed = errors.New("malformed message")

// cstring splits the NUL-terminated string at the start of b.
func cstring(b []byte) (s, rest []byte, err error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, errMalformed
	}
	return b[:i], b[i+1:], nil
}

// ParseFields returns the statement name and query text of a Parse message
// (whole message, header included). Both alias msg.
func ParseFields(msg []byte) (name, query []byte, err error) {
	name, rest, err := cstring(msg[5:])
	if err != nil {
		return nil, nil, err
	}
	query, rest, err = cstring(rest)
	if err != nil || len(rest) < 2 {
		return nil, nil, errMalformed
	}
	return name, query, nil
}

// QueryText returns the text of a Query message; it aliases msg.
func QueryText(msg []byte) ([]byte, error) {
	q, rest, err := cstring(msg[5:])
	if err != nil || len(rest) != 0 {
		return nil, errMalformed
	}
	return q, nil
}

// bindNames returns the portal and statement names of a Bind message.
func bindNames(msg []byte) (portal, stmt []byte, err error) {
	portal, rest, err := cstring(msg[5:])
	if err != nil {
		return nil, nil, err
	}
	stmt, _, err = cstring(rest)
	return portal, stmt, err
}

// executePortal returns the portal name of an Execute message.
func executePortal(msg []byte) ([]byte, error) {
	p, rest, err := cstring(msg[5:])
	if err != nil || len(rest) != 4 {
		return nil, errMalformed
	}
	return p, nil
}

// targetName returns the 'S'/'P' kind and the name of a Describe or Close.
func targetName(msg []byte) (kind byte, name []byte, err error) {
	if len(msg) < 7 || (msg[5] != 'S' && msg[5] != 'P') {
		return 0, nil, errMalformed
	}
	name, rest, err := cstring(msg[6:])
	if err != nil || len(rest) != 0 {
		return 0, nil, errMalformed
	}
	return msg[5], name, nil
}

// Encoders for the few messages pgmoat writes itself. They append to dst.

func begin(dst []byte, typ byte) ([]byte, int) {
	dst = append(dst, typ, 0, 0, 0, 0)
	return dst, len(dst) - 4
}

func finish(dst []byte, at int) []byte {
	binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at))
	return dst
}

func appendCString(dst []byte, s string) []byte { return append(append(dst, s...), 0) }

func encodeQuery(dst []byte, parts ...string) []byte {
	dst, at := begin(dst, 'Q')
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return finish(append(dst, 0), at)
}

func encodeParse(dst []byte, name, query string, paramOIDs ...uint32) []byte {
	dst, at := begin(dst, 'P')
	dst = appendCString(dst, name)
	dst = appendCString(dst, query)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(paramOIDs)))
	for _, oid := range paramOIDs {
		dst = binary.BigEndian.AppendUint32(dst, oid)
	}
	return finish(dst, at)
}

// encodeBind binds one text parameter and asks for text results.
func encodeBind(dst []byte, portal, stmt, param string) []byte {
	dst, at := begin(dst, 'B')
	dst = appendCString(dst, portal)
	dst = appendCString(dst, stmt)
	dst = binary.BigEndian.AppendUint16(dst, 0) // parameter formats: all text
	dst = binary.BigEndian.AppendUint16(dst, 1)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(param)))
	dst = append(dst, param...)
	dst = binary.BigEndian.AppendUint16(dst, 0) // result formats: all text
	return finish(dst, at)
}

func encodeExecute(dst []byte, portal string) []byte {
	dst, at := begin(dst, 'E')
	dst = appendCString(dst, portal)
	dst = binary.BigEndian.AppendUint32(dst, 0)
	return finish(dst, at)
}

func encodeClose(dst []byte, kind byte, name string) []byte {
	dst, at := begin(dst, 'C')
	dst = append(dst, kind)
	dst = appendCString(dst, name)
	return finish(dst, at)
}
