// Hand in the files below DIR as a staffwork session's inputs, start it and print its result (nats.go).
// The team is incident unless named:
//
//	go mod init submit && go get github.com/nats-io/nats.go
//	STAFFWORK_NATS_URL=nats://127.0.0.1:4222 go run submit.go DIR [TEAM]
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
)

type errorInfo struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

type submitReply struct {
	Accepted      bool       `json:"accepted"`
	Error         *errorInfo `json:"error"`
	Warnings      []string   `json:"warnings"`
	ResultSubject string     `json:"result_subject"`
}

type sessionResult struct {
	Status    string     `json:"status"`
	FinalText string     `json:"final_text"`
	Error     *errorInfo `json:"error"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		return errors.New("usage: go run submit.go DIR [TEAM]")
	}
	dir, team := os.Args[1], "incident"
	if len(os.Args) > 2 {
		team = os.Args[2]
	}
	url := os.Getenv("STAFFWORK_NATS_URL")
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return err
	}

	// Choose the session id, so the inputs can be put before the session starts.
	random := make([]byte, 8)
	if _, err := rand.Read(random); err != nil {
		return err
	}
	sessionID := "ses_" + hex.EncodeToString(random)
	inputs, err := putInputs(js, sessionID, dir)
	if err != nil {
		return err
	}
	if len(inputs) == 0 {
		return fmt.Errorf("no files below %s", dir)
	}

	request, err := json.Marshal(map[string]any{
		"type": "session.submit.v1", "task": "Why did checkout fail?", "team": team,
		"session_id": sessionID, "inputs": inputs,
	})
	if err != nil {
		return err
	}
	msg, err := nc.Request("sw.api.submit", request, 10*time.Second)
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	var reply submitReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return fmt.Errorf("submit reply: %w", err)
	}
	if !reply.Accepted {
		return fmt.Errorf("refused: %s: %s", reply.Error.Kind, reply.Error.Message)
	}
	for _, warning := range reply.Warnings {
		fmt.Fprintln(os.Stderr, "warning:", warning)
	}

	// An ordered consumer: it also replays a result stored before it started.
	sub, err := js.SubscribeSync(reply.ResultSubject, nats.OrderedConsumer())
	if err != nil {
		return err
	}
	msg, err = sub.NextMsg(10 * time.Minute)
	if errors.Is(err, nats.ErrTimeout) {
		return fmt.Errorf("no result for session %s within 10 minutes", sessionID)
	}
	if err != nil {
		return err
	}
	var result sessionResult
	if err := json.Unmarshal(msg.Data, &result); err != nil {
		return fmt.Errorf("session result: %w", err)
	}
	fmt.Printf("session %s: %s\n%s\n", sessionID, result.Status, result.FinalText)
	if result.Error != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", result.Error.Kind, result.Error.Message)
	}
	if result.Status != "idle" {
		return fmt.Errorf("session %s ended %s", sessionID, result.Status)
	}
	return nil
}

// putInputs puts every regular file below dir into the bucket sw_files as <session>/<path> and
// returns the paths.
func putInputs(js nats.JetStreamContext, sessionID, dir string) ([]string, error) {
	files, err := js.ObjectStore("sw_files")
	if err != nil {
		return nil, fmt.Errorf("bucket sw_files: %w", err)
	}
	inputs := []string{}
	err = filepath.WalkDir(dir, func(file string, entry fs.DirEntry, err error) error {
		if err != nil || !entry.Type().IsRegular() {
			return err
		}
		relative, err := filepath.Rel(dir, file)
		if err != nil {
			return err
		}
		path := filepath.ToSlash(relative)
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close() // opened for reading: closing it loses nothing
		if _, err := files.Put(&nats.ObjectMeta{Name: sessionID + "/" + path}, f); err != nil {
			return fmt.Errorf("put %s: %w", path, err)
		}
		inputs = append(inputs, path)
		return nil
	})
	return inputs, err
}
