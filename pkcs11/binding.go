package pkcs11

import (
	"context"
	"fmt"
	"slices"

	p11 "github.com/miekg/pkcs11"

	"github.com/mlskeyd/mlskeyd/keystore"
)

var _ keystore.Binder = (*Backend)(nil)

// The installation marker is a private token data object: readable only
// after login, so another application on the token cannot see which
// installation owns it, and never a key, so List and the key templates do
// not match it.
const (
	markerLabel = "mlskeyd-installation"
	markerApp   = "mlskeyd"
)

func markerTemplate() []*p11.Attribute {
	return []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_DATA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_LABEL, markerLabel),
		p11.NewAttribute(p11.CKA_APPLICATION, markerApp),
	}
}

// readMarkers returns the distinct installation ids recorded on the token.
// The first Binding after Open reads the markers Open's pass over the
// token found (startup.go); Bind, about to write one, always searches.
func (b *Backend) readMarkers(s p11.SessionHandle, atStartup bool) ([]string, error) {
	if err := b.requireLogin(s); err != nil {
		return nil, err
	}
	hs, ok := []p11.ObjectHandle(nil), false
	if atStartup {
		hs, ok = b.startupMarkers()
	}
	if !ok {
		var err error
		if hs, err = b.findAll(s, markerTemplate()); err != nil {
			return nil, err
		}
	}
	var ids []string
	for _, h := range hs {
		attrs, err := b.mod.ctx.GetAttributeValue(s, h, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
		if handleInvalid(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("C_GetAttributeValue(CKA_VALUE): %w", err)
		}
		ids = append(ids, string(attrs[0].Value))
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// Binding returns the installation id of the token's marker, "" if it has
// none. Two different markers are an error: the token was shared by two
// installations, and only an operator can say which one it belongs to.
func (b *Backend) Binding(ctx context.Context) (string, error) {
	var id string
	err := b.withSession(ctx, "binding", func(s p11.SessionHandle) error {
		ids, err := b.readMarkers(s, true)
		switch {
		case err != nil:
			return err
		case len(ids) > 1:
			return fmt.Errorf("token carries %d installation markers (%q objects): %v", len(ids), markerLabel, ids)
		case len(ids) == 1:
			id = ids[0]
		}
		return nil
	})
	return id, devErr("binding", err)
}

// Bind writes the marker for id; a token that already carries id is left
// as it is, one that carries another id is refused.
func (b *Backend) Bind(ctx context.Context, id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty installation id", keystore.ErrInvalidArgument)
	}
	b.storeMu.Lock()
	defer b.storeMu.Unlock()
	b.startupMarkers() // stale once a marker is written
	err := b.withSession(ctx, "bind", func(s p11.SessionHandle) error {
		ids, err := b.readMarkers(s, false)
		switch {
		case err != nil:
			return err
		case len(ids) == 1 && ids[0] == id:
			return nil
		case len(ids) > 0:
			return fmt.Errorf("token already belongs to installation %v", ids)
		}
		tmpl := append(markerTemplate(),
			p11.NewAttribute(p11.CKA_PRIVATE, true),
			p11.NewAttribute(p11.CKA_MODIFIABLE, false),
			p11.NewAttribute(p11.CKA_VALUE, []byte(id)),
		)
		if err := b.tokenWrite(func() error { _, err := b.mod.ctx.CreateObject(s, tmpl); return err }); err != nil {
			return fmt.Errorf("C_CreateObject(installation marker): %w", err)
		}
		return nil
	})
	return devErr("bind", err)
}
