package mls

import (
	"bytes"
	"fmt"
)

// EncryptedGroupSecrets is one Welcome entry (§12.4.3): the GroupSecrets
// HPKE-encrypted to the init_key of the KeyPackage named by NewMember.
type EncryptedGroupSecrets struct {
	NewMember  []byte // KeyPackageRef
	KEMOutput  []byte
	Ciphertext []byte
}

// Welcome is RFC 9420 §12.4.3's Welcome.
type Welcome struct {
	CipherSuite        CipherSuite
	Secrets            []EncryptedGroupSecrets
	EncryptedGroupInfo []byte
}

// Find returns the entry addressed to keyPackageRef, or nil.
func (w *Welcome) Find(keyPackageRef []byte) *EncryptedGroupSecrets {
	for i := range w.Secrets {
		if bytes.Equal(w.Secrets[i].NewMember, keyPackageRef) {
			return &w.Secrets[i]
		}
	}
	return nil
}

func (w *Welcome) encode(wr *Writer) {
	wr.U16(uint16(w.CipherSuite))
	sub := NewWriter()
	for _, s := range w.Secrets {
		sub.Vector(s.NewMember)
		sub.Vector(s.KEMOutput)
		sub.Vector(s.Ciphertext)
	}
	wr.VectorFrom(sub)
	wr.Vector(w.EncryptedGroupInfo)
}

// Marshal returns the TLS encoding of the Welcome (without MLSMessage header).
func (w *Welcome) Marshal() []byte {
	wr := NewWriter()
	w.encode(wr)
	return wr.Bytes()
}

func decodeWelcome(d *decoder) Welcome {
	var w Welcome
	w.CipherSuite = CipherSuite(d.u16("Welcome.cipher_suite"))
	// For a known suite the fixed sizes are checked entry by entry, so a
	// Welcome of short or empty entries fails at the first one: a
	// KeyPackageRef is Nh bytes (§5.2) and a kem_output Nenc.
	refSize, kemSize := -1, -1
	if s, err := LookupSuite(w.CipherSuite); err == nil {
		refSize, kemSize = s.HashSize(), s.KEMOutputSize()
	}
	d.list("Welcome.secrets", MaxWelcomeSecrets, func(d *decoder) {
		e := EncryptedGroupSecrets{
			NewMember:  d.sizedVec("EncryptedGroupSecrets.new_member", refSize),
			KEMOutput:  d.sizedVec("HPKECiphertext.kem_output", kemSize),
			Ciphertext: d.vec("HPKECiphertext.ciphertext"),
		}
		if d.err == nil {
			w.Secrets = append(w.Secrets, e)
		}
	})
	w.EncryptedGroupInfo = d.vec("Welcome.encrypted_group_info")
	return w
}

// UnmarshalWelcome decodes exactly one Welcome (without MLSMessage header).
func UnmarshalWelcome(b []byte) (*Welcome, error) {
	d := newDecoder(b)
	w := decodeWelcome(d)
	if err := d.finish("Welcome"); err != nil {
		return nil, err
	}
	return &w, nil
}

// PSK types and resumption usages (§8.4).
const (
	PSKTypeExternal   uint8 = 1
	PSKTypeResumption uint8 = 2
)

// PreSharedKeyID identifies a PSK. PSKID is set for external PSKs; Usage,
// PSKGroupID and PSKEpoch for resumption PSKs.
type PreSharedKeyID struct {
	PSKType    uint8
	PSKID      []byte
	Usage      uint8
	PSKGroupID []byte
	PSKEpoch   uint64
	Nonce      []byte
}

func (p *PreSharedKeyID) encode(w *Writer) {
	w.U8(p.PSKType)
	switch p.PSKType {
	case PSKTypeExternal:
		w.Vector(p.PSKID)
	case PSKTypeResumption:
		w.U8(p.Usage)
		w.Vector(p.PSKGroupID)
		w.U64(p.PSKEpoch)
	}
	w.Vector(p.Nonce)
}

func decodePreSharedKeyID(d *decoder) PreSharedKeyID {
	var p PreSharedKeyID
	p.PSKType = d.u8("PreSharedKeyID.psktype")
	switch {
	case d.err != nil:
	case p.PSKType == PSKTypeExternal:
		p.PSKID = d.vec("PreSharedKeyID.psk_id")
	case p.PSKType == PSKTypeResumption:
		p.Usage = d.u8("PreSharedKeyID.usage")
		p.PSKGroupID = d.vec("PreSharedKeyID.psk_group_id")
		p.PSKEpoch = d.u64("PreSharedKeyID.psk_epoch")
	default:
		d.failf("PreSharedKeyID.psktype", "invalid value %d", p.PSKType)
	}
	p.Nonce = d.vec("PreSharedKeyID.psk_nonce")
	return p
}

// GroupSecrets is the plaintext of an EncryptedGroupSecrets (§12.4.3).
// PathSecret is nil when absent and non-nil (possibly empty) when present.
type GroupSecrets struct {
	JoinerSecret []byte
	PathSecret   []byte
	PSKs         []PreSharedKeyID
}

// Marshal returns the TLS encoding of the GroupSecrets.
func (gs *GroupSecrets) Marshal() []byte {
	w := NewWriter()
	w.Vector(gs.JoinerSecret)
	w.Optional(gs.PathSecret != nil)
	if gs.PathSecret != nil {
		w.Vector(gs.PathSecret)
	}
	sub := NewWriter()
	for i := range gs.PSKs {
		gs.PSKs[i].encode(sub)
	}
	w.VectorFrom(sub)
	return w.Bytes()
}

// UnmarshalGroupSecrets decodes exactly one GroupSecrets.
func UnmarshalGroupSecrets(b []byte) (*GroupSecrets, error) {
	d := newDecoder(b)
	var gs GroupSecrets
	gs.JoinerSecret = d.vec("GroupSecrets.joiner_secret")
	if d.optional("GroupSecrets.path_secret") {
		gs.PathSecret = d.vec("PathSecret.path_secret")
	}
	d.list("GroupSecrets.psks", MaxPSKs, func(d *decoder) {
		p := decodePreSharedKeyID(d)
		if d.err == nil {
			gs.PSKs = append(gs.PSKs, p)
		}
	})
	if err := d.finish("GroupSecrets"); err != nil {
		return nil, err
	}
	return &gs, nil
}

// OpenGroupSecrets decrypts the entry egs of w with the init key handle priv
// (see DecryptWithLabel for the accepted types). The encrypted GroupInfo is
// the HPKE context, which binds the secrets to this Welcome.
func (s *Suite) OpenGroupSecrets(w *Welcome, egs *EncryptedGroupSecrets, priv any) (*GroupSecrets, error) {
	if w.CipherSuite != s.ID {
		return nil, fmt.Errorf("%w: Welcome cipher suite %v, expected %v", ErrInvalidParams, w.CipherSuite, s.ID)
	}
	pt, err := s.DecryptWithLabel(priv, LabelWelcome, w.EncryptedGroupInfo, egs.KEMOutput, egs.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("mls: GroupSecrets: %w", err)
	}
	gs, err := UnmarshalGroupSecrets(pt)
	if err != nil {
		return nil, err
	}
	if len(gs.JoinerSecret) != s.HashSize() {
		return nil, fmt.Errorf("%w: joiner_secret of %d bytes, want %d", ErrMalformed, len(gs.JoinerSecret), s.HashSize())
	}
	return gs, nil
}

// DecryptGroupInfo decrypts w's GroupInfo with the key schedule of §8:
// welcome_secret = DeriveSecret(Extract(joiner_secret, psk_secret),
// "welcome"), then key and nonce by ExpandWithLabel. A nil pskSecret means
// no PSKs, i.e. Nh zero bytes.
func (s *Suite) DecryptGroupInfo(w *Welcome, gs *GroupSecrets, pskSecret []byte) (*GroupInfo, error) {
	if w.CipherSuite != s.ID {
		return nil, fmt.Errorf("%w: Welcome cipher suite %v, expected %v", ErrInvalidParams, w.CipherSuite, s.ID)
	}
	if pskSecret == nil {
		pskSecret = make([]byte, s.HashSize())
	}
	// The intermediate secrets are wiped: the caller gets the joiner
	// secret and the GroupInfo, nothing derived on the way.
	member, err := s.Extract(gs.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	defer clear(member)
	welcomeSecret, err := s.DeriveSecret(member, "welcome")
	if err != nil {
		return nil, err
	}
	defer clear(welcomeSecret)
	key, err := s.ExpandWithLabel(welcomeSecret, "key", nil, s.AEADKeySize())
	if err != nil {
		return nil, err
	}
	defer clear(key)
	nonce, err := s.ExpandWithLabel(welcomeSecret, "nonce", nil, s.AEADNonceSize())
	if err != nil {
		return nil, err
	}
	aead, err := s.NewAEAD(key)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, nonce, w.EncryptedGroupInfo, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: GroupInfo: %w", ErrDecryption, err)
	}
	gi, err := UnmarshalGroupInfo(pt)
	if err != nil {
		return nil, err
	}
	if gi.GroupContext.CipherSuite != s.ID {
		return nil, fmt.Errorf("%w: cipher suite %v in a %v Welcome", ErrInvalidGroupInfo, gi.GroupContext.CipherSuite, s.ID)
	}
	return gi, nil
}
