// Client-matrix probe for Java (JSSE): list, upload, download over FTPS, then print what the
// data connections negotiated. Compiled at test time (javac); run by tests/matrix.
//
//   java MatrixFtp KIND HOST PORT explicit|implicit CA.pem USER LOCAL REMOTE OUT
//   KIND: jsse            plain SSLSocket; data sockets layered with the control port as the
//                         session-cache key, so JSSE resumes the control session
//         commons         Apache Commons Net FTPSClient as shipped (no session resumption)
//         commons-reuse   FTPSClient with the widely used session-cache workaround
//   The password comes from the environment (FTP_PASSWORD), never the command line.
//   Exit 0 when all three steps worked; lines "STEP name ok|fail detail" and "TLS ver cipher".

import java.io.*;
import java.lang.reflect.*;
import java.net.*;
import java.nio.file.*;
import java.security.KeyStore;
import java.security.cert.*;
import java.util.*;
import javax.net.ssl.*;

import org.apache.commons.net.ftp.FTP;
import org.apache.commons.net.ftp.FTPFile;
import org.apache.commons.net.ftp.FTPSClient;

public class MatrixFtp {
    static String tlsInfo = "";

    static SSLContext context(String caFile) throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        KeyStore ks = KeyStore.getInstance(KeyStore.getDefaultType());
        ks.load(null, null);
        try (InputStream in = new FileInputStream(caFile)) {
            int i = 0;
            for (java.security.cert.Certificate c : cf.generateCertificates(in)) {
                ks.setCertificateEntry("ca" + (i++), c);
            }
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ks);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tmf.getTrustManagers(), null);
        return ctx;
    }

    static void step(String name, boolean ok, String detail) {
        System.out.println("STEP " + name + " " + (ok ? "ok" : "fail") + " " + detail.replace('\n', ' '));
    }

    public static void main(String[] a) throws Exception {
        String kind = a[0], host = a[1];
        int port = Integer.parseInt(a[2]);
        boolean implicit = a[3].equals("implicit");
        SSLContext ctx = context(a[4]);
        String user = a[5], pass = System.getenv("FTP_PASSWORD");
        Path local = Paths.get(a[6]);
        String remote = a[7];
        Path out = Paths.get(a[8]);
        boolean ok = kind.equals("jsse")
                ? new Jsse(ctx, host, port, implicit).run(user, pass, local, remote, out)
                : runCommons(kind.equals("commons-reuse"), ctx, host, port, implicit, user, pass, local, remote, out);
        System.out.println("TLS " + tlsInfo);
        System.exit(ok ? 0 : 1);
    }

    // --- Apache Commons Net ---------------------------------------------------------------

    static class ReusingFTPSClient extends FTPSClient {
        ReusingFTPSClient(boolean implicit, SSLContext ctx) { super(implicit, ctx); }

        @Override
        protected void _prepareDataSocket_(final Socket socket) throws IOException {
            // The known workaround: put the control session into JSSE's client cache under
            // the data connection's host:port so the data handshake offers it.
            if (!(socket instanceof SSLSocket)) return;
            final SSLSession session = ((SSLSocket) _socket_).getSession();
            if (!session.isValid()) return;
            try {
                SSLSessionContext sc = session.getSessionContext();
                Field f = sc.getClass().getDeclaredField("sessionHostPortCache");
                f.setAccessible(true);
                Object cache = f.get(sc);
                Method put = cache.getClass().getDeclaredMethod("put", Object.class, Object.class);
                put.setAccessible(true);
                String key = (socket.getInetAddress().getHostAddress() + ":" + socket.getPort()).toLowerCase(Locale.ROOT);
                put.invoke(cache, key, session);
                key = (socket.getInetAddress().getHostName() + ":" + socket.getPort()).toLowerCase(Locale.ROOT);
                put.invoke(cache, key, session);
            } catch (ReflectiveOperationException e) {
                throw new IOException("session-cache workaround failed: " + e);
            }
        }
    }

    static boolean runCommons(boolean reuse, SSLContext ctx, String host, int port, boolean implicit,
                              String user, String pass, Path local, String remote, Path out) throws Exception {
        FTPSClient ftp = reuse ? new ReusingFTPSClient(implicit, ctx) : new FTPSClient(implicit, ctx);
        ftp.setConnectTimeout(15000);
        ftp.setDefaultTimeout(15000);
        ftp.setDataTimeout(java.time.Duration.ofSeconds(15));
        ftp.connect(host, port);
        ftp.execPBSZ(0);
        ftp.execPROT("P");
        if (!ftp.login(user, pass)) { step("login", false, ftp.getReplyString()); return false; }
        ftp.setFileType(FTP.BINARY_FILE_TYPE);
        ftp.enterLocalPassiveMode();
        ftp.setRemoteVerificationEnabled(true);
        boolean all = true;
        try {
            FTPFile[] files = ftp.listFiles();
            boolean ok = files != null && FTPReplyOk(ftp);
            step("list", ok, ftp.getReplyString().trim());
            all &= ok;
        } catch (IOException e) { step("list", false, e.toString()); all = false; }
        try (InputStream in = Files.newInputStream(local)) {
            boolean ok = ftp.storeFile(remote, in);
            step("upload", ok, ftp.getReplyString().trim());
            all &= ok;
        } catch (IOException e) { step("upload", false, e.toString()); all = false; }
        try (OutputStream o = Files.newOutputStream(out)) {
            boolean ok = ftp.retrieveFile(remote, o);
            step("download", ok, ftp.getReplyString().trim());
            all &= ok;
        } catch (IOException e) { step("download", false, e.toString()); all = false; }
        if (ftp.getSocket() instanceof SSLSocket) {
            SSLSession s = ((SSLSocket) ftp.getSocket()).getSession();
            tlsInfo = s.getProtocol() + " " + s.getCipherSuite();
        }
        try { ftp.logout(); ftp.disconnect(); } catch (IOException e) { /* the verdict is in */ }
        return all;
    }

    static boolean FTPReplyOk(FTPSClient ftp) {
        return ftp.getReplyCode() >= 200 && ftp.getReplyCode() < 300;
    }

    // --- plain JSSE -----------------------------------------------------------------------

    static class Jsse {
        final SSLSocketFactory factory;
        final String host;
        final int port;
        final boolean implicit;
        Socket sock;
        BufferedReader in;
        OutputStream out;

        Jsse(SSLContext ctx, String host, int port, boolean implicit) {
            this.factory = ctx.getSocketFactory();
            this.host = host;
            this.port = port;
            this.implicit = implicit;
        }

        String reply() throws IOException {
            String line = in.readLine();
            if (line == null) throw new EOFException("control connection closed");
            String last = line;
            if (line.length() > 3 && line.charAt(3) == '-') {
                String code = line.substring(0, 3);
                do { last = in.readLine(); } while (last != null && !(last.startsWith(code + " ")));
            }
            return last;
        }

        String cmd(String c) throws IOException {
            out.write((c + "\r\n").getBytes("UTF-8"));
            out.flush();
            return reply();
        }

        void attach(Socket s) throws IOException {
            sock = s;
            sock.setSoTimeout(15000);
            in = new BufferedReader(new InputStreamReader(sock.getInputStream(), "UTF-8"));
            out = sock.getOutputStream();
        }

        SSLSocket data(String command) throws IOException {
            String epsv = cmd("EPSV");
            int p = Integer.parseInt(epsv.replaceAll(".*\\|\\|\\|(\\d+)\\|.*", "$1"));
            Socket raw = new Socket(host, p);
            String r = cmd(command);
            if (!r.startsWith("1")) { raw.close(); throw new IOException(r); }
            // layered over the raw socket, keyed by the CONTROL port: JSSE looks its client
            // session cache up by host:port, so this offers the control connection's session
            SSLSocket s = (SSLSocket) factory.createSocket(raw, host, port, true);
            s.setSoTimeout(15000);
            s.startHandshake();
            tlsInfo = s.getSession().getProtocol() + " " + s.getSession().getCipherSuite();
            return s;
        }

        boolean run(String user, String pass, Path local, String remote, Path outFile) throws Exception {
            Socket raw = new Socket(host, port);
            if (implicit) {
                SSLSocket s = (SSLSocket) factory.createSocket(raw, host, port, true);
                s.startHandshake();
                attach(s);
                reply();
            } else {
                attach(raw);
                reply();
                String r = cmd("AUTH TLS");
                if (!r.startsWith("234")) throw new IOException(r);
                SSLSocket s = (SSLSocket) factory.createSocket(raw, host, port, true);
                s.startHandshake();
                attach(s);
            }
            cmd("PBSZ 0");
            cmd("PROT P");
            cmd("USER " + user);
            String r = cmd("PASS " + pass);
            if (!r.startsWith("230")) { step("login", false, r); return false; }
            cmd("TYPE I");
            boolean all = true;
            try (SSLSocket d = data("LIST")) {
                byte[] listing = d.getInputStream().readAllBytes();
                r = reply();
                boolean ok = r.startsWith("226");
                step("list", ok, r + " (" + listing.length + " bytes)");
                all &= ok;
            } catch (IOException e) { step("list", false, e.toString()); all = false; try { reply(); } catch (IOException x) { } }
            try (SSLSocket d = data("STOR " + remote)) {
                d.getOutputStream().write(Files.readAllBytes(local));
                d.close(); // JSSE sends close_notify
                r = reply();
                boolean ok = r.startsWith("226");
                step("upload", ok, r);
                all &= ok;
            } catch (IOException e) { step("upload", false, e.toString()); all = false; }
            try (SSLSocket d = data("RETR " + remote)) {
                Files.write(outFile, d.getInputStream().readAllBytes());
                r = reply();
                boolean ok = r.startsWith("226");
                step("download", ok, r);
                all &= ok;
            } catch (IOException e) { step("download", false, e.toString()); all = false; }
            try { cmd("QUIT"); } catch (IOException e) { /* the verdict is in */ }
            sock.close();
            return all;
        }
    }
}
