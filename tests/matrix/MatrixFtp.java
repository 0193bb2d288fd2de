// Client-matrix probe for Java (JSSE, Apache Commons Net): list, upload, download over FTPS, then print what the
// data connections negotiated. Compiled at test time (javac); run by tests/matrix.
//
//   java MatrixFtp KIND HOST PORT explicit|implicit CA.pem USER LOCAL REMOTE OUT
//   KIND: commons         Apache Commons Net FTPSClient as shipped (no session resumption)
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
        boolean ok = runCommons(kind.equals("commons-reuse"), ctx, host, port, implicit, user, pass, local, remote, out);
        System.out.println("TLS " + tlsInfo);
        System.exit(ok ? 0 : 1);
    }

    // --- Apache Commons Net ---------------------------------------------------------------

    static class ReusingFTPSClient extends FTPSClient {
        ReusingFTPSClient(boolean implicit, SSLContext ctx) { super(implicit, ctx); }

        @Override
        protected void _prepareDataSocket_(final Socket socket) throws IOException {
            // The known workaround: JSSE looks its client session cache up by the data
            // connection's host:port, so put the control connection's session there. With
            // TLS 1.3 the resumable session is the ticket the cache holds under the control
            // host:port, not getSession() of the control socket: copy that entry (TLS 1.3 only;
            // for TLS 1.2 the classic getSession() copy is what works).
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
                Method get = cache.getClass().getDeclaredMethod("get", Object.class);
                get.setAccessible(true);
                String controlKey = (_socket_.getInetAddress().getHostAddress() + ":" + _socket_.getPort()).toLowerCase(Locale.ROOT);
                Object ticket = get.invoke(cache, controlKey);
                boolean tls13 = "TLSv1.3".equals(session.getProtocol());
                Object value = tls13 && ticket != null ? ticket : session;
                String key = (socket.getInetAddress().getHostAddress() + ":" + socket.getPort()).toLowerCase(Locale.ROOT);
                put.invoke(cache, key, value);
                key = (socket.getInetAddress().getHostName() + ":" + socket.getPort()).toLowerCase(Locale.ROOT);
                put.invoke(cache, key, value);
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
        try { ftp.logout(); ftp.disconnect(); } catch (IOException e) { /* the verdict is in */ }
        return all;
    }

    static boolean FTPReplyOk(FTPSClient ftp) {
        return ftp.getReplyCode() >= 200 && ftp.getReplyCode() < 300;
    }
}
