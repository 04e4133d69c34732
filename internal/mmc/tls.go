package mmc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/ferry-vm/ferry/internal/identity"
)

// The admin API's own certificate, created on the first start that needs
// TLS. ferry ctl trusts it with --ca-file DIR/admin.crt (the certificate
// is its own authority).
const (
	AdminCertFile = "admin.crt"
	AdminKeyFile  = "admin.key"
)

// Admin API TLS modes (Config.AdminTLS).
const (
	TLSAuto = "auto" // TLS unless the admin address is loopback
	TLSOn   = "on"
	TLSOff  = "off" // refused for non-loopback addresses
)

// adminNeedsTLS decides whether the admin API listening on addr serves TLS.
// The bearer token must never cross a network in clear text, so TLS off is
// refused for anything but loopback.
func adminNeedsTLS(mode, addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("mmc: admin address %q: %w", addr, err)
	}
	loopback := host == "localhost"
	if ip, err := netip.ParseAddr(host); err == nil {
		loopback = ip.IsLoopback()
	}
	switch mode {
	case "", TLSAuto:
		return !loopback, nil
	case TLSOn:
		return true, nil
	case TLSOff:
		if !loopback {
			return false, fmt.Errorf("mmc: admin API on %s without TLS would send the admin token in clear text; bind it to loopback or drop --admin-tls=off", addr)
		}
		return false, nil
	}
	return false, fmt.Errorf("mmc: admin TLS mode %q: want auto, on or off", mode)
}

// adminTLSConfig loads the admin certificate from the data directory (or
// the given files), creating a self-signed one for the admin address on
// first use.
func adminTLSConfig(dir, certFile, keyFile, addr string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		certFile, keyFile = filepath.Join(dir, AdminCertFile), filepath.Join(dir, AdminKeyFile)
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if err := writeSelfSigned(certFile, keyFile, addr); err != nil {
				return nil, err
			}
		}
	}
	if fi, err := os.Stat(keyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("mmc: %s is readable by others (mode %v); chmod 600 it", keyFile, fi.Mode().Perm())
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("mmc: admin TLS certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}, nil
}

func writeSelfSigned(certFile, keyFile, addr string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	hostname, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "ferry mmc admin " + hostname},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // self-signed: it is its own trust anchor for ctl --ca-file
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if hostname != "" {
		tmpl.DNSNames = append(tmpl.DNSNames, hostname)
	}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if ip == nil && host != "" && host != "localhost" {
			tmpl.DNSNames = append(tmpl.DNSNames, host)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			// Bound to every address: name each configured one.
			if addrs, err := net.InterfaceAddrs(); err == nil {
				for _, a := range addrs {
					if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
						tmpl.IPAddresses = append(tmpl.IPAddresses, n.IP)
					}
				}
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
	defer clear(keyPEM)
	clear(kb)
	if err := identity.WriteSecretFile(keyFile, keyPEM); err != nil {
		return err
	}
	return identity.WriteSecretFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
