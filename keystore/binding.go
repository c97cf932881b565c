package keystore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// A catalog and a device belong together: the catalog's records name device
// objects, and reconciliation compares the two. Started with the catalog of
// another installation, or on another device, the daemon would take one
// side's keys for the other's leftovers. So each installation gets an id at
// its first start, recorded in the catalog and on the device, and Open
// refuses to start when they differ.

// Binder is the capability of a device that can carry an installation
// marker (PKCS#11: a private token data object). Binding returns the id
// recorded on the device, "" when it carries none; Bind records one on a
// device that carries none (an error if it carries another).
type Binder interface {
	Binding(ctx context.Context) (string, error)
	Bind(ctx context.Context, id string) error
}

// Identifier is the capability of a device with a stable identity of its
// own that its keys depend on (a TPM: the Name of its storage root key,
// derived from the owner hierarchy's seed; a key blob loads under no other).
// The catalog records it at the first start.
type Identifier interface {
	Identity(ctx context.Context) (string, error)
}

// Catalog metadata keys of the binding.
const (
	metaInstallation = "installation"
	// metaPending holds the id of a first binding between writing the
	// device marker and committing the catalog, so a crash in between is
	// finished at the next start rather than taken for a foreign device.
	metaPending  = "installation-pending"
	metaIdentity = "device-identity"
	metaDevice   = "device"
)

// ErrBinding is wrapped by every refusal to start because catalog and
// device do not belong together.
var ErrBinding = errors.New("catalog and device do not belong together")

// BindingError names both sides of a refused binding.
type BindingError struct {
	Catalog       string // catalog path
	CatalogID     string // installation id in the catalog, "" if none
	Device        string // the device's description
	DeviceID      string // installation id or identity on the device, "" if none
	Identity      bool   // DeviceID is the device's identity (Identifier)
	Problem       string // what is wrong, in words
	AdoptPossible bool   // whether adopting the device would be allowed
}

func (e *BindingError) Error() string {
	orNone := func(s string) string {
		if s == "" {
			return "none"
		}
		return s
	}
	kind := "installation"
	if e.Identity {
		kind = "identity"
	}
	return fmt.Sprintf("catalog %s (installation %s) and device %s (%s %s) %s",
		e.Catalog, orNone(e.CatalogID), e.Device, kind, orNone(e.DeviceID), e.Problem)
}

func (e *BindingError) Unwrap() error { return ErrBinding }

func newInstallationID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// Installation returns the installation id this store is bound to.
func (s *Store) Installation() string { return s.installation }

// bind checks, and on a first start establishes, the binding between the
// catalog and the device. It changes neither side when it refuses.
func (s *Store) bind(ctx context.Context) error {
	catID, err := s.cat.metaGet(metaInstallation)
	if err != nil {
		return err
	}
	pending, err := s.cat.metaGet(metaPending)
	if err != nil {
		return err
	}
	info := s.be.Info()
	// The first clause of Device names the device; the rest (PKCS#11
	// mechanism routes) would only lengthen the message.
	dev, _, _ := strings.Cut(info.Device, "; ")
	devDesc := info.Backend + " " + dev
	refuse := func(devID, problem string, adopt bool) error {
		return &BindingError{Catalog: s.path, CatalogID: catID, Device: devDesc, DeviceID: devID, Problem: problem, AdoptPossible: adopt}
	}
	if b, ok := s.be.(Binder); ok {
		devID, err := b.Binding(ctx)
		if err != nil {
			return &DeviceError{Op: "read the installation marker", Err: err}
		}
		switch {
		case catID != "" && devID == catID:
		case catID != "" && devID != "":
			return refuse(devID, "belong to different installations", false)
		case catID != "":
			if !s.opts.AdoptDevice {
				return refuse("", "do not match: the device carries no installation marker, so it is not the device this catalog was used with (or its marker was lost)", true)
			}
			if err := b.Bind(ctx, catID); err != nil {
				return &DeviceError{Op: "write the installation marker", Err: err}
			}
			s.event(EventAdopted, "device without an installation marker adopted by the catalog: "+devDesc)
		case devID != "" && devID == pending:
			// A first start wrote the marker and stopped before the catalog
			// committed it.
			if err := s.cat.metaPut(map[string]string{metaInstallation: devID, metaPending: "", metaDevice: devDesc}); err != nil {
				return err
			}
			catID = devID
			s.event(EventBound, "installation bound to "+devDesc)
		case devID != "":
			if !s.opts.AdoptDevice {
				return refuse(devID, "do not match: the catalog is new (or older than installation ids) and the device belongs to an installation", true)
			}
			if err := s.cat.metaPut(map[string]string{metaInstallation: devID, metaPending: "", metaDevice: devDesc}); err != nil {
				return err
			}
			catID = devID
			s.event(EventAdopted, "catalog adopted the installation of "+devDesc)
		default:
			if !s.opts.AdoptDevice {
				if problem, err := s.disagreement(ctx); err != nil {
					return err
				} else if problem != "" {
					return refuse("", "do not match: "+problem, true)
				}
			}
			id := pending
			if id == "" {
				id = newInstallationID()
				if err := s.cat.metaPut(map[string]string{metaPending: id}); err != nil {
					return err
				}
			}
			if err := b.Bind(ctx, id); err != nil {
				return &DeviceError{Op: "write the installation marker", Err: err}
			}
			if err := s.cat.metaPut(map[string]string{metaInstallation: id, metaPending: "", metaDevice: devDesc}); err != nil {
				return err
			}
			catID = id
			kind := EventBound
			if s.opts.AdoptDevice {
				kind = EventAdopted
			}
			s.event(kind, "installation bound to "+devDesc)
		}
	}
	if idr, ok := s.be.(Identifier); ok {
		ident, err := idr.Identity(ctx)
		if err != nil {
			return &DeviceError{Op: "read the device identity", Err: err}
		}
		catIdent, err := s.cat.metaGet(metaIdentity)
		if err != nil {
			return err
		}
		switch {
		case catIdent == ident:
		case catIdent == "":
			if err := s.cat.metaPut(map[string]string{metaIdentity: ident, metaDevice: devDesc}); err != nil {
				return err
			}
		case !s.opts.AdoptDevice:
			was, _ := s.cat.metaGet(metaDevice)
			e := refuse(ident, fmt.Sprintf("do not match: the catalog's keys were made on %s (identity %s), another device or one whose owner hierarchy was cleared", was, catIdent), true)
			e.(*BindingError).Identity = true
			return e
		default:
			if err := s.cat.metaPut(map[string]string{metaIdentity: ident, metaDevice: devDesc}); err != nil {
				return err
			}
			s.adoptedIdentity = true
			s.event(EventAdopted, "catalog adopted "+devDesc+" (identity "+ident+"), replacing identity "+catIdent)
		}
	}
	if catID == "" {
		catID = newInstallationID()
		if err := s.cat.metaPut(map[string]string{metaInstallation: catID, metaDevice: devDesc}); err != nil {
			return err
		}
	}
	s.installation = catID
	return nil
}

// disagreement reports why a catalog without an installation id and an
// unmarked device do not look like one installation: device objects the
// catalog has never heard of, or active hardware records the device lacks.
// Both agree when the catalog is new and the device empty, and when an
// installation from before installation ids starts for the first time.
func (s *Store) disagreement(ctx context.Context) (string, error) {
	l, ok := s.be.(Lister)
	if !ok {
		return "", nil
	}
	dev, err := l.List(ctx)
	if err != nil {
		return "", &DeviceError{Op: "list keys", Err: err}
	}
	onDevice := map[string]bool{}
	unknown := 0
	for _, dk := range dev {
		onDevice[dk.ID] = true
		if _, err := s.cat.get(dk.ID); errors.Is(err, ErrNotFound) {
			unknown++
		} else if err != nil {
			return "", err
		}
	}
	missing := 0
	err = s.cat.all(func(r *Record) error {
		if r.Live() && r.Protection == ProtectionHardware && !onDevice[r.ID] {
			missing++
		}
		return nil
	})
	switch {
	case err != nil:
		return "", err
	case unknown > 0:
		return fmt.Sprintf("the device holds %d mlskeyd keys this catalog does not know", unknown), nil
	case missing > 0:
		return fmt.Sprintf("%d active keys of the catalog are not on the device", missing), nil
	}
	return "", nil
}
