package mls

import "fmt"

// Wire formats (§6).
const (
	WireFormatPublicMessage  uint16 = 1
	WireFormatPrivateMessage uint16 = 2
	WireFormatWelcome        uint16 = 3
	WireFormatGroupInfo      uint16 = 4
	WireFormatKeyPackage     uint16 = 5
)

// MLSMessage is the outer framing of §6. Exactly one of KeyPackage, Welcome
// and GroupInfo is set, according to WireFormat; PublicMessage and
// PrivateMessage are not handled by this package.
type MLSMessage struct {
	Version    uint16
	WireFormat uint16
	KeyPackage *KeyPackage
	Welcome    *Welcome
	GroupInfo  *GroupInfo
}

// UnmarshalMLSMessage decodes exactly one MLSMessage carrying a KeyPackage,
// Welcome or GroupInfo. Other wire formats yield ErrUnsupportedWireFormat.
func UnmarshalMLSMessage(b []byte) (*MLSMessage, error) {
	d := newDecoder(b)
	m := &MLSMessage{
		Version:    d.u16("MLSMessage.version"),
		WireFormat: d.u16("MLSMessage.wire_format"),
	}
	if d.err != nil {
		return nil, &decodeError{err: d.err}
	}
	// The body's layout depends on the version, so nothing past it can be
	// decoded for an unknown one.
	if m.Version != ProtocolVersionMLS10 {
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedVersion, m.Version)
	}
	switch m.WireFormat {
	case WireFormatKeyPackage:
		kp := decodeKeyPackage(d)
		m.KeyPackage = &kp
	case WireFormatWelcome:
		w := decodeWelcome(d)
		m.Welcome = &w
	case WireFormatGroupInfo:
		gi := decodeGroupInfo(d)
		m.GroupInfo = &gi
	default:
		return nil, fmt.Errorf("%w: %d", ErrUnsupportedWireFormat, m.WireFormat)
	}
	if err := d.finish("MLSMessage"); err != nil {
		return nil, err
	}
	return m, nil
}

// Marshal returns the TLS encoding of the message. A body that does not
// match WireFormat is left out, which no decoder accepts.
func (m *MLSMessage) Marshal() []byte {
	w := NewWriter()
	w.U16(m.Version)
	w.U16(m.WireFormat)
	switch {
	case m.WireFormat == WireFormatKeyPackage && m.KeyPackage != nil:
		m.KeyPackage.encode(w)
	case m.WireFormat == WireFormatWelcome && m.Welcome != nil:
		m.Welcome.encode(w)
	case m.WireFormat == WireFormatGroupInfo && m.GroupInfo != nil:
		m.GroupInfo.encode(w)
	}
	return w.Bytes()
}

// KeyPackageMessage wraps kp in an mls10 MLSMessage, the form in which
// KeyPackages are published.
func KeyPackageMessage(kp *KeyPackage) []byte {
	return (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatKeyPackage, KeyPackage: kp}).Marshal()
}

// WelcomeMessage wraps w in an mls10 MLSMessage.
func WelcomeMessage(w *Welcome) []byte {
	return (&MLSMessage{Version: ProtocolVersionMLS10, WireFormat: WireFormatWelcome, Welcome: w}).Marshal()
}
