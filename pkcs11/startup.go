package pkcs11

import (
	"fmt"
	"strings"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// Start-up reads the token once. Every C_FindObjectsInit makes SoftHSM's
// file store refresh every object on the token (0.4-0.6 s at 20,000
// objects, whatever the template), and start-up used to search four
// times: secret keys (Open), the installation marker (Binding), private
// and public keys (List). Open now runs one search for every token object
// and one attribute read per object, and keeps what start-up's later
// calls need: the secret keys for the legacy seal-key check and the first
// Epochs (secretsAtOpen), the marker handles for the first Binding, and
// our key pairs, with what Check judges, for the first List. Each part is
// used once; making or destroying an object of its kind drops it, and the
// keystore drops all of it when start-up is over (StartupDone); later
// calls search as before. docs/design.md ("Start-up reads the token once")
// says why an object made after the snapshot gets no less scrutiny than
// before.

// startupView is what Open's pass over the token found for Binding and
// List. Handles are valid only in the module generation they came from.
type startupView struct {
	gen uint64
	// Each part is there until taken (have*).
	haveMarkers, haveKeys bool
	markers               []p11.ObjectHandle // candidate installation markers
	keys                  []tokenKey         // our key pairs' halves: private keys first
}

// tokenKey is one half of a key pair labelled as ours.
type tokenKey struct {
	h     p11.ObjectHandle
	class uint // CKO_PRIVATE_KEY or CKO_PUBLIC_KEY
	id    string
	// judged is checkQuery's values for a private key, nil when some of
	// them are unavailable (not an EC key: Check then reads and refuses
	// it with its own reason).
	judged []*p11.Attribute
}

// snapshotQuery is what the pass reads of every object, in one call:
// the class, the names (label, id, application) and what Check judges of
// a private key. An attribute an object does not have comes back
// unavailable without failing the others (attrReader.readSome).
func snapshotQuery() []*p11.Attribute {
	return append([]*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, nil),
		p11.NewAttribute(p11.CKA_LABEL, nil),
		p11.NewAttribute(p11.CKA_ID, nil),
		p11.NewAttribute(p11.CKA_APPLICATION, nil),
	}, checkQuery()...)
}

// ours reports whether a key's label and id are the ones this daemon
// gives its key pairs (List's filter).
func ours(label, id string) bool {
	return strings.HasPrefix(label, labelPrefix) && label == labelPrefix+id && checkID(id) == nil
}

// snapshotAtOpen runs start-up's one search, keeps the view for Binding
// and List, and returns the private secret keys (what secretKeysTemplate
// matches) for the caller to check and keep.
func (b *Backend) snapshotAtOpen(s p11.SessionHandle) ([]p11.ObjectHandle, error) {
	t0 := time.Now()
	hs, err := b.findAll(s, []*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, true)})
	if err != nil {
		return nil, err
	}
	searchTook := time.Since(t0)
	r := newAttrReader(b.mod.path, b.forwarded)
	defer r.free()
	q := snapshotQuery()
	const (
		iClass, iLabel, iID, iApp, iJudged = 0, 1, 2, 3, 4
	)
	iPrivate := -1
	for i, a := range q {
		if a.Type == p11.CKA_PRIVATE {
			iPrivate = i
		}
	}
	v := &startupView{gen: b.mod.generation(), haveMarkers: true, haveKeys: true}
	var pubs []tokenKey
	var secrets []p11.ObjectHandle
	for _, h := range hs {
		attrs, ok, err := r.readSome(s, h, q)
		if ok && err == nil && attrs[iClass] == nil {
			ok = false
		}
		if handleInvalid(err) {
			continue // destroyed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("C_GetAttributeValue: %w", err)
		}
		if !ok {
			// Behind p11-kit, or when the single read gave no class:
			// the class first, then what that class needs.
			k, isKey, marker, secret, err := b.classify(s, r, h)
			if handleInvalid(err) {
				continue
			}
			if err != nil {
				return nil, err
			}
			switch {
			case isKey && k.class == p11.CKO_PRIVATE_KEY:
				v.keys = append(v.keys, k)
			case isKey:
				pubs = append(pubs, k)
			case marker:
				v.markers = append(v.markers, h)
			case secret:
				secrets = append(secrets, h)
			}
			continue
		}
		val := func(i int) string {
			if attrs[i] == nil {
				return ""
			}
			return string(attrs[i].Value)
		}
		switch class := attrUint(attrs[iClass].Value); class {
		case p11.CKO_PRIVATE_KEY, p11.CKO_PUBLIC_KEY:
			if attrs[iLabel] == nil || attrs[iID] == nil || !ours(val(iLabel), val(iID)) {
				continue
			}
			k := tokenKey{h: h, class: class, id: val(iID)}
			if class == p11.CKO_PRIVATE_KEY {
				k.judged = attrs[iJudged:]
				for _, a := range k.judged {
					if a == nil {
						k.judged = nil
						break
					}
				}
				v.keys = append(v.keys, k)
			} else {
				pubs = append(pubs, k)
			}
		case p11.CKO_SECRET_KEY:
			if attrs[iPrivate] != nil && boolIs(attrs[iPrivate].Value, true) {
				secrets = append(secrets, h)
			}
		case p11.CKO_DATA:
			if attrs[iLabel] != nil && attrs[iApp] != nil && val(iLabel) == markerLabel && val(iApp) == markerApp {
				v.markers = append(v.markers, h)
			}
		}
	}
	v.keys = append(v.keys, pubs...)
	b.log.Debug("pkcs11: start-up read the token", "objects", len(hs), "keys", len(v.keys), "secret_keys", len(secrets),
		"markers", len(v.markers), "search", searchTook.Round(time.Millisecond), "read", (time.Since(t0) - searchTook).Round(time.Millisecond))
	b.startMu.Lock()
	b.startView = v
	b.startMu.Unlock()
	return secrets, nil
}

// classify reads object h the way snapshotAtOpen's single read does,
// when that read cannot be made: its class, then what the class needs.
func (b *Backend) classify(s p11.SessionHandle, r *attrReader, h p11.ObjectHandle) (k tokenKey, isKey, marker, secret bool, err error) {
	attrs, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, nil)})
	if err != nil {
		return k, false, false, false, fmt.Errorf("C_GetAttributeValue(CKA_CLASS): %w", err)
	}
	switch class := attrUint(attrs[0].Value); class {
	case p11.CKO_PRIVATE_KEY, p11.CKO_PUBLIC_KEY:
		k, isKey, err = b.readKey(s, r, class, h)
		return k, isKey, false, false, err
	case p11.CKO_SECRET_KEY:
		attrs, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_PRIVATE, nil)})
		if err != nil {
			return k, false, false, false, fmt.Errorf("C_GetAttributeValue(CKA_PRIVATE): %w", err)
		}
		return k, false, false, boolIs(attrs[0].Value, true), nil
	case p11.CKO_DATA:
		attrs, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_LABEL, nil),
			p11.NewAttribute(p11.CKA_APPLICATION, nil),
		})
		if err != nil {
			return k, false, false, false, fmt.Errorf("C_GetAttributeValue(CKA_LABEL, CKA_APPLICATION): %w", err)
		}
		return k, false, string(attrs[0].Value) == markerLabel && string(attrs[1].Value) == markerApp, false, nil
	}
	return k, false, false, false, nil
}

// readKey reads a key pair half found by class: its names, and for a
// private key what Check judges, in one call where the reader can. keep
// is false for a key that is not ours.
func (b *Backend) readKey(s p11.SessionHandle, r *attrReader, class uint, h p11.ObjectHandle) (k tokenKey, keep bool, err error) {
	q := []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil), p11.NewAttribute(p11.CKA_ID, nil)}
	var attrs, judged []*p11.Attribute
	if class == p11.CKO_PRIVATE_KEY {
		if attrs, err = r.read(b.mod.ctx, s, h, append(q, checkQuery()...)); err == nil {
			judged = attrs[2:]
		}
	}
	if judged == nil {
		// A public key, or a private key without some of those
		// attributes (not an EC key: another application's, or one
		// Check refuses with its own reason).
		attrs, err = r.read(b.mod.ctx, s, h, q)
	}
	if handleInvalid(err) {
		return k, false, err
	}
	if err != nil {
		return k, false, fmt.Errorf("C_GetAttributeValue: %w", err)
	}
	label, id := string(attrs[0].Value), string(attrs[1].Value)
	if !ours(label, id) {
		return k, false, nil
	}
	return tokenKey{h: h, class: class, id: id, judged: judged}, true, nil
}

// startupKeys takes the key pairs Open's pass found, if they are still
// to be had: once, in the module generation they came from.
func (b *Backend) startupKeys() ([]tokenKey, bool) {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	v := b.startView
	if v == nil || !v.haveKeys || v.gen != b.mod.generation() {
		return nil, false
	}
	v.haveKeys = false
	keys := v.keys
	v.keys = nil
	return keys, true
}

// startupMarkers takes the marker handles Open's pass found, likewise.
func (b *Backend) startupMarkers() ([]p11.ObjectHandle, bool) {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	v := b.startView
	if v == nil || !v.haveMarkers || v.gen != b.mod.generation() {
		return nil, false
	}
	v.haveMarkers = false
	markers := v.markers
	v.markers = nil
	return markers, true
}

// dropStartupKeys forgets the key pairs of Open's pass: a key made or
// destroyed since would be missing from them, or listed though gone.
func (b *Backend) dropStartupKeys() {
	b.startMu.Lock()
	defer b.startMu.Unlock()
	if v := b.startView; v != nil {
		v.haveKeys, v.keys = false, nil
	}
}

// StartupDone drops what Open's pass kept (keystore.StartupFinisher): once
// the daemon serves, every call reads the token again.
func (b *Backend) StartupDone() {
	b.startMu.Lock()
	b.startView = nil
	b.startMu.Unlock()
	b.secretsAtOpen.Store(nil)
}
