package mls

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

type welcomeVector struct {
	CipherSuite CipherSuite `json:"cipher_suite"`
	InitPriv    hexBytes    `json:"init_priv"`
	SignerPub   hexBytes    `json:"signer_pub"`
	KeyPackage  hexBytes    `json:"key_package"`
	Welcome     hexBytes    `json:"welcome"`
}

func TestWelcomeVectors(t *testing.T) {
	var vs []welcomeVector
	loadJSON(t, "welcome.json", &vs)
	if len(vs) != 7 {
		t.Fatalf("got %d entries, want 7", len(vs))
	}
	for _, v := range vs {
		s := mustSuite(t, v.CipherSuite)
		t.Run(s.Name, func(t *testing.T) {
			kpMsg, err := UnmarshalMLSMessage(v.KeyPackage)
			if err != nil || kpMsg.KeyPackage == nil {
				t.Fatalf("key_package: %v", err)
			}
			if !bytes.Equal(kpMsg.Marshal(), v.KeyPackage) || !bytes.Equal(KeyPackageMessage(kpMsg.KeyPackage), v.KeyPackage) {
				t.Error("key_package does not re-encode byte-exactly")
			}
			kp := kpMsg.KeyPackage
			if err := kp.Verify(time.Time{}); err != nil {
				t.Errorf("KeyPackage.Verify: %v", err)
			}
			wMsg, err := UnmarshalMLSMessage(v.Welcome)
			if err != nil || wMsg.Welcome == nil {
				t.Fatalf("welcome: %v", err)
			}
			if !bytes.Equal(wMsg.Marshal(), v.Welcome) {
				t.Error("welcome does not re-encode byte-exactly")
			}
			w := wMsg.Welcome
			ref := s.KeyPackageRef(v.KeyPackage[4:])
			if r2, _ := kp.Ref(); !bytes.Equal(ref, r2) {
				t.Error("KeyPackage.Ref differs from KeyPackageRef of the encoding")
			}
			egs := w.Find(ref)
			if egs == nil {
				t.Fatal("no EncryptedGroupSecrets for the KeyPackageRef")
			}
			priv, cnt := hpkeKey(t, s, v.InitPriv)
			gs, err := s.OpenGroupSecrets(w, egs, priv)
			if err != nil {
				t.Fatalf("OpenGroupSecrets: %v", err)
			}
			if cnt.count() != 1 {
				t.Errorf("ECDH called %d times, want 1", cnt.count())
			}
			if len(gs.PSKs) != 0 {
				t.Skip("vector uses PSKs")
			}
			gi, err := s.DecryptGroupInfo(w, gs, nil)
			if err != nil {
				t.Fatalf("DecryptGroupInfo: %v", err)
			}
			if err := gi.Verify(s, v.SignerPub); err != nil {
				t.Errorf("GroupInfo.Verify: %v", err)
			}
			gi.Signer ^= 1
			if err := gi.Verify(s, v.SignerPub); !errors.Is(err, ErrInvalidGroupInfo) || !errors.Is(err, ErrInvalidSignature) {
				t.Errorf("tampered GroupInfo: %v", err)
			}
			// A Welcome whose encrypted_group_info changed must not open:
			// it is the HPKE context of the GroupSecrets.
			w2 := *w
			w2.EncryptedGroupInfo = append([]byte{1}, w.EncryptedGroupInfo...)
			if _, err := s.OpenGroupSecrets(&w2, egs, priv); !errors.Is(err, ErrDecryption) {
				t.Errorf("modified Welcome: %v", err)
			}
			if _, err := s.DecryptGroupInfo(w, gs, bytes.Repeat([]byte{1}, s.HashSize())); !errors.Is(err, ErrDecryption) {
				t.Errorf("wrong psk_secret: %v", err)
			}
		})
	}
}

type messagesSubset struct {
	KeyPackage   hexBytes `json:"mls_key_package"`
	Welcome      hexBytes `json:"mls_welcome"`
	GroupInfo    hexBytes `json:"mls_group_info"`
	GroupSecrets hexBytes `json:"group_secrets"`
}

func loadMessages(t testing.TB) []messagesSubset {
	var vs []messagesSubset
	loadJSON(t, "messages-subset.json", &vs)
	return vs
}

func TestMessagesVectors(t *testing.T) {
	vs := loadMessages(t)
	if len(vs) != 300 {
		t.Fatalf("got %d entries, want 300", len(vs))
	}
	for i, v := range vs {
		m, err := UnmarshalMLSMessage(v.KeyPackage)
		if err != nil || m.KeyPackage == nil {
			t.Fatalf("%d: key package: %v", i, err)
		}
		if !bytes.Equal(m.Marshal(), v.KeyPackage) {
			t.Errorf("%d: key package re-encoding differs", i)
		}
		kp, err := UnmarshalKeyPackage(v.KeyPackage[4:])
		if err != nil || !bytes.Equal(kp.Marshal(), v.KeyPackage[4:]) {
			t.Errorf("%d: bare key package: %v", i, err)
		}
		if err := m.KeyPackage.Verify(time.Time{}); err != nil {
			t.Errorf("%d: Verify: %v", i, err)
		}
		for name, b := range map[string][]byte{"welcome": v.Welcome, "group_info": v.GroupInfo} {
			m, err := UnmarshalMLSMessage(b)
			if err != nil {
				t.Errorf("%d: %s: %v", i, name, err)
				continue
			}
			if !bytes.Equal(m.Marshal(), b) {
				t.Errorf("%d: %s re-encoding differs", i, name)
			}
		}
		gs, err := UnmarshalGroupSecrets(v.GroupSecrets)
		if err != nil {
			t.Errorf("%d: group_secrets: %v", i, err)
		} else if !bytes.Equal(gs.Marshal(), v.GroupSecrets) {
			t.Errorf("%d: group_secrets re-encoding differs", i)
		}
	}
}
