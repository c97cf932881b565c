package pkcs11

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

// opCounter counts the device operations a Backend reports.
type opCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *opCounter) ObserveDeviceOp(op string, _ time.Duration, _ error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[op]++
}

func (c *opCounter) get(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[op]
}

// startupKeys opens a catalog on a fresh token, creates a signature key
// and an init key in it, and closes both, as a daemon that stopped.
func startupKeys(t *testing.T) (Config, string, []*keystore.Record) {
	t.Helper()
	return startupKeysOn(t, newToken(t))
}

// startupKeysOn is startupKeys on the token cfg opens.
func startupKeysOn(t *testing.T, cfg Config) (Config, string, []*keystore.Record) {
	t.Helper()
	ctx := context.Background()
	b := openBackend(t, cfg)
	path := filepath.Join(t.TempDir(), "catalog.db")
	s, err := keystore.Open(ctx, path, b, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var recs []*keystore.Record
	for _, sp := range []keystore.KeySpec{
		{Role: keystore.RoleSignature, Algorithm: keystore.ECDSAP256},
		{Role: keystore.RoleInit, Algorithm: keystore.X25519},
	} {
		r, err := s.Create(ctx, sp)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return cfg, path, recs
}

// TestStartupChecksKeysFromTheListing: start-up judges every hardware key
// on what listing the token read, without a device call per key (each one
// costs SoftHSM a refresh of the object's file: seconds at 10,000 keys).
func TestStartupChecksKeysFromTheListing(t *testing.T) {
	cfg, path, recs := startupKeys(t)
	ops := &opCounter{}
	cfg.Observer = ops
	b := openBackend(t, cfg)
	s, err := keystore.Open(context.Background(), path, b, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := ops.get("check"); n != 0 {
		t.Errorf("start-up made %d per-key check calls for %d keys, want 0 (judged from the listing)", n, len(recs))
	}
	if n := ops.get("list"); n != 1 {
		t.Errorf("start-up listed the token %d times, want 1", n)
	}
	for _, r := range recs {
		if got, err := s.Get(r.ID); err != nil || got.State != keystore.StateActive {
			t.Fatalf("key %s after start-up: %v %v", r.ID, got, err)
		}
	}
}

// TestStartupRefusesPlantedWeakKey: a private key planted under a catalog
// key's id and label that is not a never-extractable key made on the
// token still stops start-up, with the reason and the key named; a
// catalog key gone from the token is still found and quarantined.
func TestStartupRefusesPlantedWeakKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		// weaken changes the planted private key's template, and what
		// the token is then told after generating it.
		weaken func(priv []*p11.Attribute) (set []*p11.Attribute)
		want   string
	}{
		{"extractable", func(priv []*p11.Attribute) []*p11.Attribute {
			setAttr(priv, p11.CKA_EXTRACTABLE, true)
			return nil
		}, "CKA_NEVER_EXTRACTABLE is not true"},
		{"not always sensitive", func(priv []*p11.Attribute) []*p11.Attribute {
			setAttr(priv, p11.CKA_SENSITIVE, false)
			return []*p11.Attribute{p11.NewAttribute(p11.CKA_SENSITIVE, true)}
		}, "CKA_ALWAYS_SENSITIVE is not true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cfg, path, recs := startupKeys(t)
			weak := recs[0]
			id, err := DecodeRef(weak.DeviceRef)
			if err != nil {
				t.Fatal(err)
			}
			b := openBackend(t, cfg)
			if err := b.Destroy(ctx, weak.DeviceRef); err != nil {
				t.Fatal(err)
			}
			spec := b.specs[weak.Algorithm]
			err = b.withSession(ctx, "test", func(s p11.SessionHandle) error {
				pt, kt := keyPairTemplates(spec, id, true)
				set := tc.weaken(kt)
				_, priv, err := b.mod.ctx.GenerateKeyPair(s, []*p11.Mechanism{p11.NewMechanism(spec.genMech, nil)}, pt, kt)
				if err != nil || set == nil {
					return err
				}
				return b.mod.ctx.SetAttributeValue(s, priv, set)
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}

			b = openBackend(t, cfg)
			_, err = keystore.Open(ctx, path, b, keystore.Options{})
			if err == nil {
				t.Fatal("start-up accepted a planted weak key")
			}
			if !errors.Is(err, ErrNotProtected) || !strings.Contains(err.Error(), weak.ID) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("start-up error %q: want ErrNotProtected naming key %s and %q", err, weak.ID, tc.want)
			}
			t.Log(err)
		})
	}

	t.Run("missing", func(t *testing.T) {
		ctx := context.Background()
		cfg, path, recs := startupKeys(t)
		gone := recs[1]
		b := openBackend(t, cfg)
		if err := b.Destroy(ctx, gone.DeviceRef); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var quarantined []string
		s, err := keystore.Open(ctx, path, b, keystore.Options{OnEvent: func(e keystore.Event) {
			mu.Lock()
			defer mu.Unlock()
			if e.Kind == keystore.EventQuarantined {
				quarantined = append(quarantined, e.KeyIDs...)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r, err := s.Get(gone.ID)
		if err != nil || r.State != keystore.StateMissing {
			t.Fatalf("catalog key gone from the token: %v %v, want state missing", r, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(quarantined, gone.ID) {
			t.Fatalf("no quarantine event for %s: %v", gone.ID, quarantined)
		}
		if r, err := s.Get(recs[0].ID); err != nil || r.State != keystore.StateActive {
			t.Fatalf("the other key: %v %v", r, err)
		}
	})
}

func setAttr(attrs []*p11.Attribute, typ uint, v bool) {
	for i, a := range attrs {
		if a.Type == typ {
			attrs[i] = p11.NewAttribute(typ, v)
		}
	}
}

// TestEpochsSearchesOnce: listing the epoch keys of both kinds is one pass
// over the token, not one per kind (each pass reads every object's file on
// SoftHSM).
func TestEpochsSearchesOnce(t *testing.T) {
	ctx := context.Background()
	b := openBackend(t, newToken(t))
	s, err := keystore.Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), b, keystore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b.cache.clear() // as after a restart
	before := b.searches.Load()
	ids, err := b.Epochs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) == 0 {
		t.Fatal("no epoch key listed after the keystore started one")
	}
	if n := b.searches.Load() - before; n != 1 {
		t.Fatalf("listing epochs ran %d token searches, want 1", n)
	}
}

// TestHoldSharesInitialisation: a Backend opened while dev mode holds
// SoftHSM uses that initialisation (the token's objects are loaded once),
// and releasing the hold leaves the Backend working.
func TestHoldSharesInitialisation(t *testing.T) {
	requireSoftHSM(t)
	h, err := InitSoftHSM(t.TempDir(), testLabel)
	if err != nil {
		t.Fatal(err)
	}
	pin := RandomPIN()
	if err := h.InitToken(RandomPIN(), pin); err != nil {
		t.Fatal(err)
	}
	release, err := h.Hold()
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	b := openBackend(t, h.Config(pin))
	modMu.Lock()
	refs := b.mod.refs
	modMu.Unlock()
	if refs != 2 {
		t.Fatalf("module references with a hold and a Backend: %d, want 2 (one initialisation)", refs)
	}
	release()
	release() // a second call does nothing
	ref, pub, err := b.Generate(context.Background(), "held", keystore.Ed25519)
	if err != nil {
		t.Fatalf("Backend after the hold's release: %v", err)
	}
	verifySign(t, b, ref, keystore.Ed25519, pub)
}

// TestAttrReaderReadsAsTheModule: the one-call reader gives what
// miekg/pkcs11's two calls give, falls back for a value longer than its
// buffers, and reports the module's errors.
func TestAttrReaderReadsAsTheModule(t *testing.T) {
	ctx := context.Background()
	b := openBackend(t, newToken(t))
	if _, _, err := b.Generate(ctx, "reader", keystore.X25519); err != nil {
		t.Fatal(err)
	}
	r := newAttrReader(b.mod.path, b.forwarded)
	defer r.free()
	if r.fn == nil {
		t.Fatal("no C_GetAttributeValue found in the loaded SoftHSM module")
	}
	long := strings.Repeat("x", 3*attrSlot)
	err := b.withSession(ctx, "test", func(s p11.SessionHandle) error {
		h, err := b.lookup(s, objKey{p11.CKO_PRIVATE_KEY, "reader"})
		if err != nil {
			return err
		}
		q := append([]*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil), p11.NewAttribute(p11.CKA_ID, nil)}, checkQuery()...)
		got, err := r.read(b.mod.ctx, s, h, q)
		if err != nil {
			return err
		}
		want, err := b.mod.ctx.GetAttributeValue(s, h, q)
		if err != nil {
			return err
		}
		for i := range want {
			if got[i].Type != want[i].Type || string(got[i].Value) != string(want[i].Value) {
				t.Errorf("attribute 0x%x: %x, module says %x", want[i].Type, got[i].Value, want[i].Value)
			}
		}
		// CKA_VALUE of a sensitive key: the module's refusal, as an error.
		if _, err := r.read(b.mod.ctx, s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)}); !isCode(err, p11.CKR_ATTRIBUTE_SENSITIVE) {
			t.Errorf("reading a sensitive value: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
		}
		d, err := b.mod.ctx.CreateObject(s, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
			p11.NewAttribute(p11.CKA_TOKEN, false),
			p11.NewAttribute(p11.CKA_LABEL, long),
		})
		if err != nil {
			return err
		}
		got, err = r.read(b.mod.ctx, s, d, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil)})
		if err != nil || string(got[0].Value) != long {
			t.Errorf("a %d-byte label: %d bytes, %v", len(long), len(got[0].Value), err)
		}
		return b.mod.ctx.DestroyObject(s, d)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestStartupSearches: a restart passes over the token's objects once.
// Open's one search for every token object serves the legacy seal-key
// check, the first Epochs, the installation marker (Binding) and the key
// listing (List); each search would read every object's file on SoftHSM.
// Through p11-kit too, where each object is read class first.
func TestStartupSearches(t *testing.T) {
	for _, forwarded := range []bool{false, true} {
		t.Run(map[bool]string{false: "softhsm", true: "p11kit"}[forwarded], func(t *testing.T) {
			var cfg Config
			var path string
			var recs []*keystore.Record
			if forwarded {
				_, cfg = forwardedToken(t)
				cfg, path, recs = startupKeysOn(t, cfg)
			} else {
				cfg, path, recs = startupKeys(t)
			}
			b := openBackend(t, cfg)
			s, err := keystore.Open(context.Background(), path, b, keystore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if n := b.searches.Load(); n != 1 {
				t.Fatalf("start-up ran %d token searches, want 1", n)
			}
			for _, r := range recs {
				if got, err := s.Get(r.ID); err != nil || got.State != keystore.StateActive {
					t.Fatalf("key %s after start-up: %v %v", r.ID, got, err)
				}
			}
			if b.startView != nil || b.secretsAtOpen.Load() != nil {
				t.Error("start-up's view of the token is kept after start-up")
			}
			// Later calls search again.
			if _, err := b.Binding(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := b.searches.Load(); n != 2 {
				t.Fatalf("Binding after start-up ran %d searches, want 1", n-1)
			}
		})
	}
}

// TestStartupViewDroppedByChanges: a key made or destroyed after Open
// and before the first List is listed as the token has it then, not as
// Open's pass saw it.
func TestStartupViewDroppedByChanges(t *testing.T) {
	ctx := context.Background()
	cfg := newToken(t)
	b := openBackend(t, cfg)
	if _, _, err := b.Generate(ctx, "kept", keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Generate(ctx, "gone", keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = openBackend(t, cfg)
	if _, _, err := b.Generate(ctx, "new", keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if err := b.Destroy(ctx, EncodeRef("gone")); err != nil {
		t.Fatal(err)
	}
	keys, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range keys {
		ids = append(ids, k.ID)
	}
	if want := []string{"kept", "new"}; !slices.Equal(ids, want) {
		t.Fatalf("List after Generate and Destroy: %v, want %v", ids, want)
	}
}

// TestReadSomeOnSoftHSM: SoftHSM 2.6 answers a C_GetAttributeValue that
// names attributes an object lacks as PKCS#11 says: the others filled,
// the missing ones CK_UNAVAILABLE_INFORMATION. Start-up's single read of
// every object relies on it.
func TestReadSomeOnSoftHSM(t *testing.T) {
	ctx := context.Background()
	cfg := newToken(t)
	b := openBackend(t, cfg)
	if _, _, err := b.Generate(ctx, "k", keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if err := b.Bind(ctx, "installation"); err != nil {
		t.Fatal(err)
	}
	r := newAttrReader(b.mod.path, false)
	defer r.free()
	err := b.withSession(ctx, "test", func(s p11.SessionHandle) error {
		for _, tc := range []struct {
			tmpl    []*p11.Attribute
			class   uint
			label   string
			missing []uint
		}{
			{markerTemplate(), p11.CKO_DATA, markerLabel, []uint{p11.CKA_ID, p11.CKA_KEY_TYPE, p11.CKA_SIGN, p11.CKA_NEVER_EXTRACTABLE}},
			{objKey{p11.CKO_PUBLIC_KEY, "k"}.template(), p11.CKO_PUBLIC_KEY, labelPrefix + "k", []uint{p11.CKA_APPLICATION, p11.CKA_NEVER_EXTRACTABLE, p11.CKA_SENSITIVE}},
			{objKey{p11.CKO_PRIVATE_KEY, "k"}.template(), p11.CKO_PRIVATE_KEY, labelPrefix + "k", []uint{p11.CKA_APPLICATION}},
		} {
			hs, err := b.findAll(s, tc.tmpl)
			if err != nil || len(hs) != 1 {
				t.Fatalf("class 0x%x: %d objects, %v", tc.class, len(hs), err)
			}
			attrs, ok, err := r.readSome(s, hs[0], snapshotQuery())
			if err != nil || !ok {
				t.Fatalf("class 0x%x: readSome: %v %v", tc.class, ok, err)
			}
			if attrUint(attrs[0].Value) != tc.class || string(attrs[1].Value) != tc.label {
				t.Errorf("class 0x%x: read class 0x%x label %q", tc.class, attrUint(attrs[0].Value), attrs[1].Value)
			}
			for i, a := range attrs {
				if slices.Contains(tc.missing, snapshotQuery()[i].Type) && a != nil {
					t.Errorf("class 0x%x: attribute 0x%x it lacks read as %v", tc.class, snapshotQuery()[i].Type, a)
				}
			}
			// What start-up needs of each class is there.
			need := map[uint][]int{p11.CKO_DATA: {3}, p11.CKO_PUBLIC_KEY: {2}, p11.CKO_PRIVATE_KEY: {2}}[tc.class]
			if tc.class == p11.CKO_PRIVATE_KEY {
				for i := 4; i < len(attrs); i++ {
					need = append(need, i)
				}
			}
			for _, i := range need {
				if attrs[i] == nil {
					t.Errorf("class 0x%x: attribute 0x%x unavailable", tc.class, snapshotQuery()[i].Type)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAttrReaderThroughP11Kit: p11-kit's client module hands out a new,
// uninitialised instance for every C_GetFunctionList, so the one-call
// reader must not use its own; even when asked to, it notices
// (CKR_CRYPTOKI_NOT_INITIALIZED) and reads through miekg/pkcs11.
func TestAttrReaderThroughP11Kit(t *testing.T) {
	_, cfg := forwardedToken(t)
	b := openBackend(t, cfg)
	ctx := context.Background()
	if _, _, err := b.Generate(ctx, "forwarded", keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if !b.forwarded {
		t.Fatal("the p11-kit client module is not recognised as forwarding")
	}
	r := newAttrReader(b.mod.path, false)
	defer r.free()
	err := b.withSession(ctx, "test", func(s p11.SessionHandle) error {
		h, err := b.lookup(s, objKey{p11.CKO_PRIVATE_KEY, "forwarded"})
		if err != nil {
			return err
		}
		got, err := r.read(b.mod.ctx, s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_ID, nil)})
		if err != nil {
			return err
		}
		if string(got[0].Value) != "forwarded" {
			t.Errorf("CKA_ID %q through p11-kit, want %q", got[0].Value, "forwarded")
		}
		if r.tmpl != nil {
			t.Error("the reader still calls its own instance of the module")
		}
		t.Logf("own instance found: %v", r.fn != nil)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := b.List(ctx)
	if err != nil || len(keys) != 1 || keys[0].Check == nil || keys[0].Check(keystore.ECDSAP256) != nil {
		t.Fatalf("List through p11-kit: %v %v", keys, err)
	}
}
